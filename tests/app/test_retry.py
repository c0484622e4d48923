"""POST .../runs/{run_id}/retry: a new run of exactly the failed deliveries of an ended run."""

from __future__ import annotations

import uuid

from litestar.testing import AsyncTestClient

from app.http.asgi import create_app
from tests.fakes.webhook import Reply
from tests.helpers import CAMPAIGNS, create_campaign, publish, recipients, walk
from tests.jobs.delivery_helpers import assert_counters_equal_rows, deliver_until_ended
from tests.tokens import bearer


def run_url(campaign: dict, run_id: str) -> str:
    return f"{CAMPAIGNS}/{campaign['id']}/runs/{run_id}"


async def retry(client, campaign: dict, run_id: str, **headers: str):
    return await client.post(f"{run_url(campaign, run_id)}/retry", headers=bearer() | headers)


async def end_with_failures(db, run_id: str, failed: set[int]) -> None:
    """What workers leave behind: the run completed, `failed` positions failed, the other
    pending deliveries sent."""
    run = uuid.UUID(run_id)
    await db.execute(
        """
        UPDATE deliveries SET attempts = 1,
            status = CASE WHEN position = ANY($2::int[]) THEN 'failed' ELSE 'sent' END,
            last_error = CASE WHEN position = ANY($2::int[]) THEN '550 no such user' END
        WHERE run_id = $1 AND status = 'pending'
        """,
        run,
        list(failed),
    )
    await db.execute(
        """
        UPDATE runs SET status = 'completed', started_at = now(), completed_at = now(),
            sent_count = (SELECT count(*) FROM deliveries WHERE run_id = $1 AND status = 'sent'),
            failed_count = (SELECT count(*) FROM deliveries WHERE run_id = $1 AND status = 'failed')
        WHERE id = $1
        """,
        run,
    )


async def test_retry_publishes_exactly_the_failed_deliveries_and_leaves_the_original(client, db):
    campaign = await create_campaign(client)
    people = recipients(6)
    run = (await publish(client, campaign["id"], {"recipients": people})).json()
    await end_with_failures(db, run["id"], {1, 4, 5})
    original = (await client.get(run_url(campaign, run["id"]), headers=bearer())).json()
    original_deliveries = await walk(client, f"{run_url(campaign, run['id'])}/deliveries", bearer())

    response = await retry(client, campaign, run["id"])

    assert response.status_code == 202, response.text
    again = response.json()
    assert again["id"] != run["id"]
    assert again["retry_of"] == run["id"]
    assert (again["status"], again["total_recipients"], again["skipped_count"]) == ("queued", 3, 0)
    assert response.headers["location"] == run_url(campaign, again["id"])
    deliveries = await walk(client, f"{run_url(campaign, again['id'])}/deliveries", bearer())
    assert [(d["person_id"], d["recipient"], d["status"]) for d in deliveries] == [
        (people[i]["person_id"], people[i]["recipient"], "pending") for i in (1, 4, 5)
    ]
    # The original is as it was, deliveries and all.
    assert (await client.get(run_url(campaign, run["id"]), headers=bearer())).json() == original
    assert (
        await walk(client, f"{run_url(campaign, run['id'])}/deliveries", bearer())
        == original_deliveries
    )
    runs = (await client.get(f"{CAMPAIGNS}/{campaign['id']}/runs", headers=bearer())).json()
    assert [r["retry_of"] for r in runs["items"]] == [run["id"], None]


async def test_retry_skips_addresses_suppressed_since_the_original(client, db):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(4)})).json()
    await end_with_failures(db, run["id"], {0, 2, 3})
    response = await client.put(
        "/v1/messaging/brands/brand-a/suppressions/USER2@example.com",
        json={"reason": "unsubscribed"},
        headers=bearer(),
    )
    assert response.status_code == 200

    again = (await retry(client, campaign, run["id"])).json()

    assert (again["total_recipients"], again["skipped_count"]) == (3, 1)
    deliveries = await walk(client, f"{run_url(campaign, again['id'])}/deliveries", bearer())
    assert [(d["recipient"], d["status"], d["reason"]) for d in deliveries] == [
        ("user0@example.com", "pending", None),
        ("user2@example.com", "skipped", "suppressed"),
        ("user3@example.com", "pending", None),
    ]


async def test_retry_of_a_run_not_ended_or_without_failures_is_412(client, db):
    campaign = await create_campaign(client)
    queued = (await publish(client, campaign["id"], {"recipients": recipients(2)})).json()
    running = (await publish(client, campaign["id"], {"recipients": recipients(2)})).json()
    clean = (await publish(client, campaign["id"], {"recipients": recipients(2)})).json()
    await end_with_failures(db, clean["id"], set())
    # A worker's first window: one delivery failed for good, the other still pending.
    await db.execute(
        "UPDATE deliveries SET status = 'failed', attempts = 1 WHERE run_id = $1 AND position = 0",
        uuid.UUID(running["id"]),
    )
    await db.execute(
        "UPDATE runs SET status = 'running', started_at = now(), failed_count = 1 WHERE id = $1",
        uuid.UUID(running["id"]),
    )

    not_ended = await retry(client, campaign, queued["id"])
    not_yet = await retry(client, campaign, running["id"])
    nothing_failed = await retry(client, campaign, clean["id"])

    assert not_ended.status_code == 412
    assert not_ended.json()["error"] == "bad_state"
    assert not_ended.json()["details"] == {
        "status": "queued",
        "allowed": ["completed", "cancelled"],
    }
    assert not_yet.status_code == 412
    assert not_yet.json()["details"] == {
        "status": "running",
        "allowed": ["completed", "cancelled"],
    }
    assert nothing_failed.status_code == 412
    assert nothing_failed.json()["details"] == {
        "status": "completed",
        "allowed": ["completed", "cancelled"],
        "failed_count": 0,
    }
    assert await db.fetchval("SELECT count(*) FROM runs") == 3


async def test_a_cancelled_run_retries_its_failed_and_not_its_cancelled(client, db):
    campaign = await create_campaign(client)
    people = recipients(4)
    run = (await publish(client, campaign["id"], {"recipients": people})).json()
    # A worker failed position 1 for good, then the run was cancelled.
    await db.execute(
        "UPDATE deliveries SET status = 'failed', attempts = 1 WHERE run_id = $1 AND position = 1",
        uuid.UUID(run["id"]),
    )
    await db.execute(
        "UPDATE runs SET status = 'running', failed_count = 1 WHERE id = $1", uuid.UUID(run["id"])
    )
    cancelled = await client.post(f"{run_url(campaign, run['id'])}/cancel", headers=bearer())
    assert cancelled.json()["status"] == "cancelled", cancelled.text

    response = await retry(client, campaign, run["id"])

    assert response.status_code == 202, response.text
    again = run_url(campaign, response.json()["id"])
    deliveries = await walk(client, f"{again}/deliveries", bearer())
    assert [(d["recipient"], d["status"]) for d in deliveries] == [
        (people[1]["recipient"], "pending")
    ]


async def test_retry_with_an_idempotency_key_creates_one_run(client, db):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(3)})).json()
    other = (await publish(client, campaign["id"], {"recipients": recipients(3)})).json()
    await end_with_failures(db, run["id"], {0})
    await end_with_failures(db, other["id"], {1})

    first = await retry(client, campaign, run["id"], **{"Idempotency-Key": "r-1"})
    repeat = await retry(client, campaign, run["id"], **{"Idempotency-Key": "r-1"})
    elsewhere = await retry(client, campaign, other["id"], **{"Idempotency-Key": "r-1"})

    assert (first.status_code, repeat.status_code) == (202, 202)
    assert repeat.json()["id"] == first.json()["id"]
    assert elsewhere.status_code == 422
    assert elsewhere.json()["error"] == "idempotency_key_reused"
    assert await db.fetchval("SELECT count(*) FROM runs WHERE retry_of IS NOT NULL") == 1


async def test_retry_of_another_brands_run_is_404_and_needs_the_publish_scope(client, db):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(2)})).json()
    await end_with_failures(db, run["id"], {0})
    url = f"{run_url(campaign, run['id'])}/retry"

    foreign = await client.post(url, headers=bearer(brands=["brand-b"]))
    read_only = await client.post(url, headers=bearer(scopes=["messaging:campaigns:read"]))

    assert foreign.status_code == 404
    assert read_only.status_code == 403
    assert await db.fetchval("SELECT count(*) FROM runs") == 1


async def test_failed_deliveries_of_a_real_run_are_sent_by_its_retry(webhook_settings, db, sink):
    sink.replies["user2@example.com"] = Reply(status=422, body=b"mailbox full")
    sink.replies["user5@example.com"] = Reply(status=422, body=b"mailbox full")
    async with AsyncTestClient(create_app(webhook_settings)) as client:
        campaign = await create_campaign(client)
        run = (await publish(client, campaign["id"], {"recipients": recipients(8)})).json()
        await deliver_until_ended(webhook_settings, db, run["id"])
        assert await assert_counters_equal_rows(db, run["id"]) == {"sent": 6, "failed": 2}

        sink.replies.clear()  # the receiver takes them now
        again = (await retry(client, campaign, run["id"])).json()
        await deliver_until_ended(webhook_settings, db, again["id"])

        final = (await client.get(run_url(campaign, again["id"]), headers=bearer())).json()
    assert (final["status"], final["sent_count"], final["total_recipients"]) == ("completed", 2, 2)
    retried = [r.json() for r in sink.requests if r.json()["run_id"] == again["id"]]
    assert sorted(m["recipient"] for m in retried) == ["user2@example.com", "user5@example.com"]
    assert await assert_counters_equal_rows(db, run["id"]) == {"sent": 6, "failed": 2}
