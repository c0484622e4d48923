"""Arranging campaigns through the API, the way a client would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from tests.conftest import url_of
from tests.tokens import bearer
from tests.waiting import pages

CAMPAIGNS = "/v1/messaging/campaigns"


async def create_campaign(
    client: Any,
    *,
    brand: str = "brand-a",
    channel: str = "email",
    activate: bool = True,
    **texts: str,
) -> dict[str, Any]:
    """`texts`: the campaign's `body`, `subject` or `html_body`, instead of the defaults."""
    body: dict[str, Any] = {
        "brand_id": brand,
        "name": "Winter check-up",
        "channel": channel,
        "body": "Hello, it is time for your check-up.",
        "sender": "care@example.com" if channel == "email" else "+15550000000",
    }
    if channel == "email":
        body["subject"] = "Your check-up"
    body |= texts
    response = await client.post(CAMPAIGNS, json=body, headers=bearer(brands=[brand]))
    assert response.status_code == 201, response.text
    campaign: dict[str, Any] = response.json()
    if activate:
        response = await client.post(
            f"{CAMPAIGNS}/{campaign['id']}/activate", headers=bearer(brands=[brand])
        )
        assert response.status_code == 200, response.text
        campaign = response.json()
    return campaign


def recipients(n: int, *, domain: str = "example.com") -> list[dict[str, str]]:
    return [{"person_id": f"p{i}", "recipient": f"user{i}@{domain}"} for i in range(n)]


async def publish(
    client: Any, campaign_id: str, body: Any, *, brand: str = "brand-a", **token: Any
) -> Any:
    return await client.post(
        f"{CAMPAIGNS}/{campaign_id}/publish", json=body, headers=bearer(brands=[brand], **token)
    )


async def walk(client: Any, url: str, headers: dict[str, str], **params: Any) -> list[Any]:
    """Every item of a paginated listing, following next_cursor page by page."""
    items: list[Any] = []
    cursor = None
    for _ in pages(f"the walk of {url}"):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(url, params=query, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return items


@asynccontextmanager
async def database_unreachable(db: Any) -> AsyncIterator[None]:
    """No new connection is allowed, and the web process's connections are cut."""
    name = await db.fetchval("SELECT current_database()")
    # A database cannot close its doors from inside: do it from the maintenance one.
    admin = await asyncpg.connect(url_of("postgres"))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
