"""GET /v1/messaging/campaigns (filters, keyset pagination) and PATCH of a draft."""

from __future__ import annotations

import asyncio
import base64
import uuid

import httpx
import pytest

from tests.helpers import CAMPAIGNS, create_campaign, walk
from tests.tokens import bearer
from tests.waiting import pages


async def test_list_shows_the_tokens_brands_newest_first(client):
    a1 = await create_campaign(client, brand="brand-a")
    await create_campaign(client, brand="brand-b")
    a2 = await create_campaign(client, brand="brand-a", activate=False)

    response = await client.get(CAMPAIGNS, headers=bearer(brands=["brand-a"]))

    assert response.status_code == 200
    page = response.json()
    assert page == {"items": [a2, a1], "next_cursor": None}


async def test_a_token_for_all_brands_lists_every_brand(client):
    a = await create_campaign(client, brand="brand-a")
    b = await create_campaign(client, brand="brand-b")

    items = await walk(client, CAMPAIGNS, bearer(brands=["*"]))

    assert [c["id"] for c in items] == [b["id"], a["id"]]


async def test_a_token_of_several_brands_lists_them_all(client):
    a = await create_campaign(client, brand="brand-a")
    await create_campaign(client, brand="brand-c")
    b = await create_campaign(client, brand="brand-b")

    items = await walk(client, CAMPAIGNS, bearer(brands=["brand-a", "brand-b"]))

    assert [c["id"] for c in items] == [b["id"], a["id"]]


async def test_filters_by_brand_and_status(client):
    active = await create_campaign(client, brand="brand-a")
    draft = await create_campaign(client, brand="brand-a", activate=False)
    await create_campaign(client, brand="brand-b")
    token = bearer(brands=["*"])

    by_brand = await walk(client, CAMPAIGNS, token, brand_id="brand-a")
    drafts = await walk(client, CAMPAIGNS, token, brand_id="brand-a", status="draft")
    actives = await walk(client, CAMPAIGNS, token, status="active")

    assert [c["id"] for c in by_brand] == [draft["id"], active["id"]]
    assert [c["id"] for c in drafts] == [draft["id"]]
    assert {c["brand_id"] for c in actives} == {"brand-a", "brand-b"}
    assert {c["status"] for c in actives} == {"active"}


async def test_filtering_by_a_brand_outside_the_token_is_403(client):
    await create_campaign(client, brand="brand-b")

    response = await client.get(
        CAMPAIGNS, params={"brand_id": "brand-b"}, headers=bearer(brands=["brand-a"])
    )

    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert response.json()["details"] == {"brand_id": "brand-b"}


async def test_a_token_of_no_brand_lists_nothing(client):
    await create_campaign(client, brand="brand-a")

    response = await client.get(CAMPAIGNS, headers=bearer(brands=[]))

    assert response.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"status": "deleted"}, "query.status"),
        ({"limit": "0"}, "query.limit"),
        ({"limit": "501"}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
    ],
)
async def test_invalid_query_is_400_naming_the_parameter(client, params, where):
    response = await client.get(CAMPAIGNS, params=params, headers=bearer())

    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"
    assert where in response.json()["details"]


async def test_list_needs_a_token_and_the_read_scope(client):
    assert (await client.get(CAMPAIGNS)).status_code == 401
    response = await client.get(CAMPAIGNS, headers=bearer(scopes=["messaging:campaigns:write"]))
    assert response.status_code == 403
    assert response.json()["details"] == {"required_scope": "messaging:campaigns:read"}


async def test_pages_are_limit_sized_and_default_to_50(client, db):
    await create_campaign(client)
    await db.execute(
        "INSERT INTO campaigns (brand_id, name, channel, body, subject, created_by)"
        " SELECT 'brand-a', 'c' || i, 'email', 'b', 's', 't' FROM generate_series(1, 540) i"
    )

    default = (await client.get(CAMPAIGNS, headers=bearer())).json()
    largest = (await client.get(CAMPAIGNS, params={"limit": 500}, headers=bearer())).json()
    everything = await walk(client, CAMPAIGNS, bearer(), limit=500)

    assert len(default["items"]) == 50 and default["next_cursor"]
    assert len(largest["items"]) == 500 and largest["next_cursor"]
    assert len(everything) == 541
    assert len({c["id"] for c in everything}) == 541


async def test_a_walk_sees_every_campaign_once_while_new_ones_are_created(client):
    existing = [(await create_campaign(client, activate=False))["id"] for _ in range(23)]
    token = bearer()

    seen: list[str] = []
    cursor = None
    for _ in pages("the walk of the campaigns"):
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(CAMPAIGNS, params=params, headers=token)).json()
        seen.extend(c["id"] for c in page["items"])
        # Someone else creates campaigns while this caller pages.
        await create_campaign(client, activate=False)
        await create_campaign(client, brand="brand-b", activate=False)
        if (cursor := page["next_cursor"]) is None:
            break

    assert len(seen) == len(set(seen))
    assert set(existing) <= set(seen)
    assert [i for i in seen if i in existing] == existing[::-1]


async def test_a_walk_under_truly_concurrent_inserts(live_server, db):
    """Pages read over real connections while another client inserts without pause."""
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        existing = {(await create_campaign(http, activate=False))["id"] for _ in range(40)}
        stop = asyncio.Event()

        async def insert_until_stopped() -> int:
            created = 0
            while not stop.is_set():
                await create_campaign(http, activate=False)
                created += 1
            return created

        inserter = asyncio.create_task(insert_until_stopped())
        try:
            seen = [c["id"] for c in await walk(http, CAMPAIGNS, bearer(), limit=3)]
        finally:
            stop.set()
            created = await inserter

    assert created > 0
    assert len(seen) == len(set(seen))
    assert existing <= set(seen)


def forge(cursor: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[-1] ^= 1  # the last byte of the position
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


async def test_forged_garbage_or_foreign_cursors_are_400(client):
    for _ in range(3):
        await create_campaign(client, brand="brand-a")
        await create_campaign(client, brand="brand-b")
    everyone = bearer(brands=["*"])
    page = (await client.get(CAMPAIGNS, params={"limit": 1}, headers=everyone)).json()
    cursor = page["next_cursor"]
    brand_b_cursor = (
        await client.get(CAMPAIGNS, params={"limit": 1, "brand_id": "brand-b"}, headers=everyone)
    ).json()["next_cursor"]

    attempts = [
        {"cursor": forge(cursor)},
        {"cursor": "not a cursor"},
        {"cursor": "AAAA"},
        {"cursor": cursor[:-3]},
        {"cursor": "é"},
        # A cursor of one listing used on another: another filter, another brand.
        {"cursor": cursor, "status": "active"},
        {"cursor": brand_b_cursor, "brand_id": "brand-a"},
        {"cursor": brand_b_cursor},
    ]
    for params in attempts:
        response = await client.get(CAMPAIGNS, params=params, headers=everyone)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"] == "invalid_cursor"


async def test_a_cursor_is_refused_to_a_token_of_other_brands(client):
    for _ in range(3):
        await create_campaign(client, brand="brand-a")
        await create_campaign(client, brand="brand-b")
    everyone_cursor = (
        await client.get(CAMPAIGNS, params={"limit": 1}, headers=bearer(brands=["*"]))
    ).json()["next_cursor"]
    brand_a_cursor = (
        await client.get(CAMPAIGNS, params={"limit": 1}, headers=bearer(brands=["brand-a"]))
    ).json()["next_cursor"]

    # The same listing (no filter) replayed by tokens of other brands.
    replays = [
        (everyone_cursor, ["brand-a"]),
        (brand_a_cursor, ["brand-b"]),
        (brand_a_cursor, ["brand-a", "brand-b"]),
        (brand_a_cursor, ["*"]),
    ]
    for cursor, brands in replays:
        response = await client.get(
            CAMPAIGNS, params={"cursor": cursor}, headers=bearer(brands=brands)
        )
        assert response.status_code == 400, (brands, response.text)
        assert response.json()["error"] == "invalid_cursor"

    # The same brands in another order, or repeated, are the same scope.
    items = await walk(
        client, CAMPAIGNS, bearer(brands=["brand-a", "brand-a"]), cursor=brand_a_cursor
    )
    assert len(items) == 2 and {c["brand_id"] for c in items} == {"brand-a"}


# PATCH


async def test_patch_changes_a_drafts_content(client):
    campaign = await create_campaign(client, activate=False)

    response = await client.patch(
        f"{CAMPAIGNS}/{campaign['id']}",
        json={"name": "Spring check-up", "subject": "Spring", "sender": None},
        headers=bearer(),
    )

    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["name"] == "Spring check-up"
    assert updated["subject"] == "Spring"
    assert updated["sender"] is None
    assert updated["body"] == campaign["body"]
    assert updated["updated_at"] > campaign["updated_at"]
    assert (await client.get(f"{CAMPAIGNS}/{campaign['id']}", headers=bearer())).json() == updated


async def test_patch_to_sms_may_drop_the_subject_but_email_needs_one(client):
    campaign = await create_campaign(client, activate=False)
    url = f"{CAMPAIGNS}/{campaign['id']}"

    no_subject = await client.patch(url, json={"subject": None}, headers=bearer())
    to_sms = await client.patch(url, json={"channel": "sms", "subject": None}, headers=bearer())

    assert no_subject.status_code == 400
    assert no_subject.json()["details"] == {"$.subject": "required for channel email"}
    assert to_sms.status_code == 200
    assert (to_sms.json()["channel"], to_sms.json()["subject"]) == ("sms", None)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"brand_id": "brand-b"}, "$"),
        ({"status": "active"}, "$"),
        ({"name": ""}, "$.name"),
        ({"channel": "fax"}, "$.channel"),
        ({"body": None}, "$.body"),
    ],
)
async def test_patch_of_something_else_than_content_is_400(client, body, where):
    campaign = await create_campaign(client, activate=False)

    response = await client.patch(f"{CAMPAIGNS}/{campaign['id']}", json=body, headers=bearer())

    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"
    assert where in response.json()["details"], response.json()


async def test_an_empty_patch_changes_nothing(client):
    campaign = await create_campaign(client, activate=False)

    response = await client.patch(f"{CAMPAIGNS}/{campaign['id']}", json={}, headers=bearer())

    assert response.status_code == 200
    assert response.json() == campaign


@pytest.mark.parametrize("archive", [False, True])
async def test_patch_of_an_active_or_archived_campaign_is_412(client, archive):
    campaign = await create_campaign(client)
    status = "active"
    if archive:
        await client.post(f"{CAMPAIGNS}/{campaign['id']}/archive", headers=bearer())
        status = "archived"

    response = await client.patch(
        f"{CAMPAIGNS}/{campaign['id']}", json={"name": "x"}, headers=bearer()
    )

    assert response.status_code == 412
    assert response.json()["error"] == "bad_state"
    assert response.json()["details"] == {"status": status, "allowed": ["draft"]}


async def test_patch_of_another_brand_or_unknown_campaign_is_404(client):
    other = await create_campaign(client, brand="brand-b", activate=False)

    for campaign_id in (other["id"], str(uuid.uuid4()), "nope"):
        response = await client.patch(
            f"{CAMPAIGNS}/{campaign_id}", json={"name": "x"}, headers=bearer(brands=["brand-a"])
        )
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    unchanged = await client.get(f"{CAMPAIGNS}/{other['id']}", headers=bearer(brands=["*"]))
    assert unchanged.json()["name"] == other["name"]


async def test_patch_needs_a_token_and_the_write_scope(client):
    campaign = await create_campaign(client, activate=False)
    url = f"{CAMPAIGNS}/{campaign['id']}"

    assert (await client.patch(url, json={"name": "x"})).status_code == 401
    response = await client.patch(
        url, json={"name": "x"}, headers=bearer(scopes=["messaging:campaigns:read"])
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "a JSON body is required"), (b'{"name": ', "Input data was truncated")],
)
async def test_patch_without_a_json_body_is_400(client, content, message):
    campaign = await create_campaign(client, activate=False)

    response = await client.patch(
        f"{CAMPAIGNS}/{campaign['id']}",
        content=content,
        headers={**bearer(), "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"
    assert response.json()["details"] == {"$": message}
