"""GET .../runs (newest first) and GET .../runs/{run_id}/deliveries."""

from __future__ import annotations

import uuid

import pytest

from app.services.pagination import cursor_key, encode_cursor, listing_of
from tests.helpers import CAMPAIGNS, create_campaign, publish, recipients, walk
from tests.tokens import TEST_SECRET, bearer
from tests.waiting import pages

DELIVERY_FIELDS = {
    "id",
    "person_id",
    "recipient",
    "status",
    "reason",
    "attempts",
    "last_error",
    "provider_message_id",
    "sent_at",
    # what the provider reported after the send (POST /v1/messaging/providers/*/events)
    "outcome",
    "outcome_at",
    "outcome_detail",
    # a pending delivery waiting for its recipient's quiet hours to end: until when
    "not_before",
}


async def new_run(client, campaign, n: int = 3, **kwargs) -> dict:
    response = await publish(
        client, campaign["id"], {"recipients": recipients(n)}, brand=campaign["brand_id"], **kwargs
    )
    assert response.status_code == 202, response.text
    return response.json()


# runs


async def test_runs_are_listed_newest_first(client):
    campaign = await create_campaign(client)
    other = await create_campaign(client)
    runs = [await new_run(client, campaign) for _ in range(3)]
    await new_run(client, other)

    response = await client.get(f"{CAMPAIGNS}/{campaign['id']}/runs", headers=bearer())

    assert response.status_code == 200
    assert response.json() == {"items": runs[::-1], "next_cursor": None}


async def test_a_walk_of_runs_sees_each_once_while_runs_are_published(client):
    campaign = await create_campaign(client)
    existing = [(await new_run(client, campaign, 1))["id"] for _ in range(11)]
    url = f"{CAMPAIGNS}/{campaign['id']}/runs"

    seen: list[str] = []
    cursor = None
    for _ in pages("the walk of the runs"):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(url, params=params, headers=bearer())).json()
        seen.extend(run["id"] for run in page["items"])
        await new_run(client, campaign, 1)
        if (cursor := page["next_cursor"]) is None:
            break

    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in existing] == existing[::-1]


async def test_a_runs_cursor_is_bound_to_its_campaign(client):
    first = await create_campaign(client)
    second = await create_campaign(client)
    for campaign in (first, second):
        await new_run(client, campaign)
        await new_run(client, campaign)
    cursor = (
        await client.get(f"{CAMPAIGNS}/{first['id']}/runs", params={"limit": 1}, headers=bearer())
    ).json()["next_cursor"]

    response = await client.get(
        f"{CAMPAIGNS}/{second['id']}/runs", params={"cursor": cursor}, headers=bearer()
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_cursor"
    assert response.json()["details"] == {"query.cursor": "invalid"}  # the parameter's name


async def test_runs_of_another_brand_or_unknown_campaign_are_404(client):
    other = await create_campaign(client, brand="brand-b")
    await new_run(client, other)

    for campaign_id in (other["id"], str(uuid.uuid4()), "x"):
        response = await client.get(
            f"{CAMPAIGNS}/{campaign_id}/runs", headers=bearer(brands=["brand-a"])
        )
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


async def test_runs_need_a_token_and_the_read_scope(client):
    campaign = await create_campaign(client)
    url = f"{CAMPAIGNS}/{campaign['id']}/runs"

    assert (await client.get(url)).status_code == 401
    response = await client.get(url, headers=bearer(scopes=["messaging:campaigns:publish"]))
    assert response.status_code == 403


# deliveries


async def test_deliveries_show_the_fate_of_each_recipient_in_request_order(client, db):
    campaign = await create_campaign(client)
    body = {
        "recipients": [
            {"person_id": "p1", "recipient": "ann@example.com"},
            {"person_id": "p2", "recipient": "ANN@example.com"},
            {"person_id": "p3", "recipient": "bob@example.com"},
        ]
    }
    run = (await publish(client, campaign["id"], body)).json()
    # What a worker leaves behind after sending to bob.
    await db.execute(
        "UPDATE deliveries SET status = 'sent', attempts = 1, provider_message_id = 'm-1',"
        " sent_at = '2026-11-27T10:00:00Z' WHERE run_id = $1 AND position = 2",
        uuid.UUID(run["id"]),
    )

    response = await client.get(
        f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/deliveries", headers=bearer()
    )

    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None
    assert [set(d) for d in page["items"]] == [DELIVERY_FIELDS] * 3
    first, duplicate, sent = page["items"]
    assert first == {
        "id": f"{run['id']}:0",
        "person_id": "p1",
        "recipient": "ann@example.com",
        "status": "pending",
        "reason": None,
        "attempts": 0,
        "last_error": None,
        "provider_message_id": None,
        "sent_at": None,
        "outcome": None,
        "outcome_at": None,
        "outcome_detail": None,
        "not_before": None,
    }
    assert (duplicate["status"], duplicate["reason"]) == ("skipped", "duplicate")
    assert duplicate["recipient"] == "ANN@example.com"  # as the caller sent it
    assert (sent["status"], sent["attempts"], sent["provider_message_id"]) == ("sent", 1, "m-1")
    assert sent["sent_at"] == "2026-11-27T10:00:00Z"


async def test_deliveries_filter_by_status(client, db):
    campaign = await create_campaign(client)
    run = await new_run(client, campaign, 10)
    await db.execute(
        "UPDATE deliveries SET status = 'failed', attempts = 5, last_error = '550 no such user'"
        " WHERE run_id = $1 AND position % 3 = 0",
        uuid.UUID(run["id"]),
    )
    url = f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/deliveries"

    failed = await walk(client, url, bearer(), status="failed", limit=2)
    pending = await walk(client, url, bearer(), status="pending")

    assert [d["id"] for d in failed] == [f"{run['id']}:{p}" for p in (0, 3, 6, 9)]
    assert {d["last_error"] for d in failed} == {"550 no such user"}
    assert len(pending) == 6 and {d["status"] for d in pending} == {"pending"}


async def test_a_walk_of_deliveries_sees_each_position_once(client):
    campaign = await create_campaign(client)
    run = await new_run(client, campaign, 1234)
    url = f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/deliveries"

    items = await walk(client, url, bearer(), limit=500)

    assert [d["id"] for d in items] == [f"{run['id']}:{p}" for p in range(1234)]
    assert items[1233]["person_id"] == "p1233"


async def test_a_deliveries_cursor_is_bound_to_its_run_and_filter(client):
    campaign = await create_campaign(client)
    first, second = await new_run(client, campaign, 5), await new_run(client, campaign, 5)
    base = f"{CAMPAIGNS}/{campaign['id']}/runs"
    cursor = (
        await client.get(f"{base}/{first['id']}/deliveries", params={"limit": 2}, headers=bearer())
    ).json()["next_cursor"]

    for url, params in (
        (f"{base}/{second['id']}/deliveries", {"cursor": cursor}),
        (f"{base}/{first['id']}/deliveries", {"cursor": cursor, "status": "pending"}),
    ):
        response = await client.get(url, params=params, headers=bearer())
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_cursor"


async def test_invalid_delivery_status_filter_is_400(client):
    campaign = await create_campaign(client)
    run = await new_run(client, campaign)

    response = await client.get(
        f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/deliveries",
        params={"status": "lost"},
        headers=bearer(),
    )

    assert response.status_code == 400
    assert "query.status" in response.json()["details"]


@pytest.mark.parametrize("which", ["other-brand", "other-campaign", "unknown-run", "not-a-uuid"])
async def test_deliveries_of_runs_one_may_not_see_are_404(client, which):
    mine = await create_campaign(client)
    other_brand = await create_campaign(client, brand="brand-b")
    mine_run = await new_run(client, mine)
    theirs = await new_run(client, other_brand)
    second = await create_campaign(client)
    campaign_id, run_id = {
        "other-brand": (other_brand["id"], theirs["id"]),
        "other-campaign": (second["id"], mine_run["id"]),
        "unknown-run": (mine["id"], str(uuid.uuid4())),
        "not-a-uuid": (mine["id"], "1:2"),
    }[which]

    response = await client.get(
        f"{CAMPAIGNS}/{campaign_id}/runs/{run_id}/deliveries", headers=bearer(brands=["brand-a"])
    )

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_deliveries_need_a_token_and_the_read_scope(client):
    campaign = await create_campaign(client)
    run = await new_run(client, campaign)
    url = f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/deliveries"

    assert (await client.get(url)).status_code == 401
    response = await client.get(url, headers=bearer(scopes=["messaging:campaigns:write"]))
    assert response.status_code == 403


async def test_read_run_of_another_brand_is_404(client):
    other = await create_campaign(client, brand="brand-b")
    run = await new_run(client, other)

    response = await client.get(
        f"{CAMPAIGNS}/{other['id']}/runs/{run['id']}", headers=bearer(brands=["brand-a"])
    )

    assert response.status_code == 404


@pytest.mark.parametrize("position", [2**40, 2**31, -5])
async def test_a_cursor_made_with_the_key_but_past_any_position_is_400(client, position):
    """Encrypted with the service's very key (one that leaked, say), a position no
    delivery can have is refused like any forged cursor: it once reached PostgreSQL as
    an int4 out of range, a 500."""
    campaign = await create_campaign(client)
    run = await new_run(client, campaign)
    listing = listing_of(["brand-a"], "deliveries", run["id"], None)
    forged = encode_cursor(cursor_key(TEST_SECRET), listing, (position,))
    url = f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/deliveries"

    genuine = await client.get(url, params={"limit": 1}, headers=bearer())
    response = await client.get(url, params={"cursor": forged}, headers=bearer())

    assert genuine.status_code == 200 and genuine.json()["next_cursor"]
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_cursor"
