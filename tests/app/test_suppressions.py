"""PUT, GET, DELETE /v1/messaging/brands/{brand_id}/suppressions/{recipient} and the list."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.helpers import create_campaign, publish, walk
from tests.tokens import bearer
from tests.waiting import pages

BRANDS = "/v1/messaging/brands"


def url(recipient: str | None = None, brand: str = "brand-a") -> str:
    base = f"{BRANDS}/{brand}/suppressions"
    return base if recipient is None else f"{base}/{quote(recipient, safe='')}"


async def suppress(client, recipient: str, reason: str = "unsubscribed", brand: str = "brand-a"):
    return await client.put(
        url(recipient, brand), json={"reason": reason}, headers=bearer(brands=[brand])
    )


async def test_put_answers_200_with_the_normalised_suppression(client, db):
    response = await suppress(client, "Ann@Example.COM")

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"brand_id", "recipient", "reason", "created_at", "topic"}
    assert (body["brand_id"], body["recipient"], body["reason"], body["topic"]) == (
        "brand-a",
        "ann@example.com",
        "unsubscribed",
        None,  # brand-wide
    )
    assert body["created_at"].endswith("Z")
    rows = await db.fetch("SELECT brand_id, address, reason FROM suppressions")
    assert [tuple(r) for r in rows] == [("brand-a", "ann@example.com", "unsubscribed")]


async def test_put_is_idempotent_and_may_change_the_reason(client, db):
    first = (await suppress(client, "ann@example.com")).json()
    again = await suppress(client, "ANN@example.com")
    changed = await suppress(client, "ann@example.com", reason="complained")

    assert again.status_code == 200 and again.json() == first
    assert changed.status_code == 200
    assert changed.json() == {**first, "reason": "complained"}
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 1


async def test_phone_numbers_are_kept_as_they_are(client):
    response = await suppress(client, "+14155550100", reason="manual")

    assert response.status_code == 200
    assert response.json()["recipient"] == "+14155550100"


@pytest.mark.parametrize(
    ("recipient", "body", "where"),
    [
        ("not-an-address", {"reason": "manual"}, "path.recipient"),
        ("4155550100", {"reason": "manual"}, "path.recipient"),
        ("ann@example.com", {"reason": "annoyed"}, "$.reason"),
        ("ann@example.com", {}, "$"),
        ("ann@example.com", {"reason": "manual", "until": "2027"}, "$"),
    ],
)
async def test_put_of_an_invalid_address_or_reason_is_400(client, db, recipient, body, where):
    response = await client.put(url(recipient), json=body, headers=bearer())

    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"
    assert where in response.json()["details"], response.json()
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_get_tells_whether_and_why_an_address_is_suppressed(client):
    await suppress(client, "ann@example.com", reason="bounced")

    found = await client.get(url("ANN@example.com"), headers=bearer())
    missing = await client.get(url("bob@example.com"), headers=bearer())

    assert found.status_code == 200
    assert (found.json()["recipient"], found.json()["reason"]) == ("ann@example.com", "bounced")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


async def test_delete_answers_204_then_404(client, db):
    await suppress(client, "ann@example.com")

    deleted = await client.delete(url("Ann@example.com"), headers=bearer())
    again = await client.delete(url("ann@example.com"), headers=bearer())

    assert deleted.status_code == 204
    assert deleted.content == b""
    assert again.status_code == 404
    assert again.json()["error"] == "not_found"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_list_walks_the_brands_suppressions_in_address_order(client):
    addresses = [f"user{i:02d}@example.com" for i in range(12)]
    for address in reversed(addresses):
        await suppress(
            client, address, reason="bounced" if address.endswith("3@example.com") else "manual"
        )
    await suppress(client, "other@example.com", brand="brand-b")

    items = await walk(client, url(), bearer(), limit=5)
    bounced = await walk(client, url(), bearer(), reason="bounced")

    assert [s["recipient"] for s in items] == addresses
    assert {s["brand_id"] for s in items} == {"brand-a"}
    assert [s["recipient"] for s in bounced] == ["user03@example.com"]


async def test_a_walk_of_suppressions_sees_each_once_while_addresses_are_added(client):
    existing = [f"user{i:02d}@example.com" for i in range(10)]
    for address in existing:
        await suppress(client, address)

    seen: list[str] = []
    cursor = None
    for added in pages("the walk of the suppressions"):
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(url(), params=params, headers=bearer())).json()
        seen.extend(s["recipient"] for s in page["items"])
        for prefix in ("a", "z"):  # one before every cursor, one after
            await suppress(client, f"{prefix}{added}@example.com")
        if (cursor := page["next_cursor"]) is None:
            break

    assert len(seen) == len(set(seen))
    assert [s for s in seen if s in existing] == existing


async def test_a_suppressions_cursor_is_bound_to_its_brand(client):
    for brand in ("brand-a", "brand-b"):
        for i in range(3):
            await suppress(client, f"u{i}@example.com", brand=brand)
    everyone = bearer(brands=["*"])
    cursor = (await client.get(url(brand="brand-b"), params={"limit": 1}, headers=everyone)).json()[
        "next_cursor"
    ]

    response = await client.get(url(brand="brand-a"), params={"cursor": cursor}, headers=everyone)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_cursor"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", url(), None),
        ("GET", url("ann@example.com"), None),
        ("PUT", url("ann@example.com"), {"reason": "manual"}),
        ("DELETE", url("ann@example.com"), None),
    ],
)
async def test_a_brand_outside_the_token_is_403_on_every_route(client, method, path, body):
    await suppress(client, "ann@example.com", brand="brand-a")

    response = await client.request(method, path, json=body, headers=bearer(brands=["brand-b"]))

    assert response.status_code == 403
    assert response.json() == {
        "error": "forbidden",
        "message": "this token may not act for brand brand-a",
        "details": {"brand_id": "brand-a"},
    }
    assert (await client.get(url("ann@example.com"), headers=bearer())).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "scope"),
    [
        ("GET", url(), None, "messaging:campaigns:read"),
        ("GET", url("ann@example.com"), None, "messaging:campaigns:read"),
        ("PUT", url("ann@example.com"), {"reason": "manual"}, "messaging:campaigns:write"),
        ("DELETE", url("ann@example.com"), None, "messaging:campaigns:write"),
    ],
)
async def test_routes_need_a_token_and_their_scope(client, method, path, body, scope):
    others = [s for s in ("messaging:campaigns:read", "messaging:campaigns:write") if s != scope]

    unauthenticated = await client.request(method, path, json=body)
    unscoped = await client.request(method, path, json=body, headers=bearer(scopes=others))

    assert unauthenticated.status_code == 401
    assert unscoped.status_code == 403
    assert unscoped.json()["details"] == {"required_scope": scope}


async def test_publish_skips_an_address_suppressed_through_the_api(client, db):
    campaign = await create_campaign(client)
    await suppress(client, "Gone@Example.com")
    body = {
        "recipients": [
            {"person_id": "1", "recipient": "gone@example.com"},
            {"person_id": "2", "recipient": "here@example.com"},
        ]
    }

    run = (await publish(client, campaign["id"], body)).json()

    assert run["skipped_count"] == 1
    reasons = await db.fetch("SELECT reason FROM deliveries ORDER BY position")
    assert [r["reason"] for r in reasons] == ["suppressed", None]

    await client.delete(url("gone@example.com"), headers=bearer())
    again = (await publish(client, campaign["id"], body)).json()
    assert again["skipped_count"] == 0
