"""Publish with `send_at`: a `scheduled` run whose jobs wait in the queue for that instant
(no worker runs here; tests/jobs/test_schedule.py delivers them)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from litestar.testing import AsyncTestClient

from app.http.asgi import create_app
from tests.helpers import CAMPAIGNS, create_campaign, publish, recipients, walk
from tests.tokens import bearer


def at(delta: timedelta) -> datetime:
    return datetime.now(UTC) + delta


def rfc3339(moment: datetime) -> str:
    return moment.isoformat()


async def waiting_jobs(db, run_id: str) -> list:
    rows: list = await db.fetch(
        "SELECT status::text, scheduled_at, args FROM procrastinate_jobs"
        " WHERE task_name = 'deliver_batch' AND args ->> 'run_id' = $1 ORDER BY id",
        run_id,
    )
    return rows


async def test_send_at_makes_a_scheduled_run_whose_jobs_wait_for_that_instant(client, db):
    campaign = await create_campaign(client)
    # An offset other than UTC: the instant is what counts.
    send_at = at(timedelta(hours=2)).astimezone(timezone(timedelta(hours=-5)))
    body = {"recipients": recipients(1200), "send_at": rfc3339(send_at)}

    response = await publish(client, campaign["id"], body)

    assert response.status_code == 202, response.text
    run = response.json()
    assert run["status"] == "scheduled"
    assert datetime.fromisoformat(run["scheduled_for"]) == send_at
    assert run["scheduled_for"].endswith("Z")  # every timestamp is UTC
    assert (run["started_at"], run["sent_count"]) == (None, 0)
    jobs = await waiting_jobs(db, run["id"])
    # DELIVERY_BATCH_SIZE 500: three jobs, all waiting in the queue until send_at.
    assert [(j["status"], j["args"]["first"], j["args"]["last"]) for j in jobs] == [
        ("todo", 0, 499),
        ("todo", 500, 999),
        ("todo", 1000, 1199),
    ]
    assert {j["scheduled_at"] for j in jobs} == {send_at}
    read = await client.get(f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}", headers=bearer())
    assert read.json() == run


async def test_runs_listing_filters_by_status(client):
    campaign = await create_campaign(client)
    queued = (await publish(client, campaign["id"], {"recipients": recipients(2)})).json()
    scheduled = [
        (
            await publish(
                client,
                campaign["id"],
                {"recipients": recipients(2), "send_at": rfc3339(at(timedelta(days=n)))},
            )
        ).json()
        for n in (1, 2, 3)
    ]
    url = f"{CAMPAIGNS}/{campaign['id']}/runs"

    listed = await walk(client, url, bearer(), status="scheduled", limit=2)
    others = await walk(client, url, bearer(), status="queued")
    bad = await client.get(url, params={"status": "later"}, headers=bearer())

    assert [r["id"] for r in listed] == [r["id"] for r in reversed(scheduled)]  # newest first
    assert {r["status"] for r in listed} == {"scheduled"}
    assert [r["id"] for r in others] == [queued["id"]]
    assert bad.status_code == 400
    assert "query.status" in bad.json()["details"]


async def test_a_cursor_of_one_status_filter_is_refused_for_another(client):
    campaign = await create_campaign(client)
    for n in (1, 2):
        body = {"recipients": recipients(1), "send_at": rfc3339(at(timedelta(days=n)))}
        await publish(client, campaign["id"], body)
    url = f"{CAMPAIGNS}/{campaign['id']}/runs"
    first = await client.get(url, params={"status": "scheduled", "limit": 1}, headers=bearer())

    other = await client.get(
        url, params={"status": "queued", "cursor": first.json()["next_cursor"]}, headers=bearer()
    )

    assert other.status_code == 400
    assert other.json()["error"] == "invalid_cursor"


@pytest.mark.parametrize(
    ("delta", "problem"),
    [
        (-timedelta(minutes=5, seconds=30), "in the past"),
        (timedelta(days=90, minutes=1), "90 days ahead"),
    ],
)
async def test_send_at_out_of_bounds_is_400_naming_it_and_creates_nothing(
    client, db, delta, problem
):
    campaign = await create_campaign(client)
    body = {"recipients": recipients(3), "send_at": rfc3339(at(delta))}

    response = await publish(client, campaign["id"], body)

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "validation_error"
    assert problem in response.json()["details"]["$.send_at"]
    assert await db.fetchval("SELECT count(*) FROM runs") == 0
    assert await db.fetchval("SELECT count(*) FROM procrastinate_jobs") == 0


@pytest.mark.parametrize(
    ("send_at", "problem"),
    [
        ("9999-12-31T23:59:59-14:00", "90 days ahead"),  # after year 9999 in UTC
        ("9999-12-31T23:59:59+14:00", "90 days ahead"),
        ("0001-01-01T00:00:00+14:00", "in the past"),  # before year 1 in UTC
        ("0001-01-01T00:00:00-14:00", "in the past"),
    ],
)
@pytest.mark.parametrize("key", [None, "extreme"], ids=["no-key", "idempotency-key"])
async def test_send_at_at_the_ends_of_the_calendar_is_400_with_or_without_a_key(
    client, db, send_at, problem, key
):
    campaign = await create_campaign(client)
    headers = bearer() | ({"Idempotency-Key": key} if key else {})

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/publish",
        json={"recipients": recipients(1), "send_at": send_at},
        headers=headers,
    )

    assert response.status_code == 400, response.text
    assert problem in response.json()["details"]["$.send_at"]
    assert await db.fetchval("SELECT count(*) FROM runs") == 0


@pytest.mark.parametrize("delta", [-timedelta(minutes=4, seconds=30), timedelta(days=89, hours=23)])
async def test_send_at_within_bounds_is_accepted(client, db, delta):
    campaign = await create_campaign(client)
    send_at = at(delta)

    response = await publish(
        client, campaign["id"], {"recipients": recipients(3), "send_at": rfc3339(send_at)}
    )

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "scheduled"
    jobs = await waiting_jobs(db, response.json()["id"])
    assert [j["scheduled_at"] for j in jobs] == [send_at]  # in the past: due at once


@pytest.mark.parametrize(
    "send_at", ["2026-12-01T10:00:00", "tomorrow", "2026-12-01", 1764583200, None]
)
async def test_send_at_must_be_an_rfc3339_instant_with_an_offset(client, send_at):
    campaign = await create_campaign(client)

    response = await publish(
        client, campaign["id"], {"recipients": recipients(1), "send_at": send_at}
    )

    if send_at is None:  # null is the same as absent: delivery starts now
        assert response.status_code == 202
        assert (response.json()["status"], response.json()["scheduled_for"]) == ("queued", None)
    else:
        assert response.status_code == 400, response.text
        assert set(response.json()["details"]) == {"$.send_at"}


async def test_idempotency_key_of_a_scheduled_publish(client, db):
    campaign = await create_campaign(client)
    send_at = at(timedelta(hours=5)).replace(microsecond=0)
    body = {"recipients": recipients(3), "send_at": rfc3339(send_at)}
    key = {"Idempotency-Key": "schedule-1"}
    url = f"{CAMPAIGNS}/{campaign['id']}/publish"

    first = await client.post(url, json=body, headers=bearer() | key)
    # The same instant written with another offset is the same body.
    same_instant = {**body, "send_at": send_at.astimezone(timezone(timedelta(hours=9))).isoformat()}
    repeat = await client.post(url, json=same_instant, headers=bearer() | key)
    later = {**body, "send_at": rfc3339(send_at + timedelta(minutes=1))}
    other = await client.post(url, json=later, headers=bearer() | key)
    unscheduled = await client.post(
        url, json={"recipients": body["recipients"]}, headers=bearer() | key
    )

    assert first.status_code == 202 and first.json()["status"] == "scheduled"
    assert repeat.status_code == 202 and repeat.json() == first.json()
    assert other.status_code == 422 and unscheduled.status_code == 422
    assert await db.fetchval("SELECT count(*) FROM runs") == 1
    assert len(await waiting_jobs(db, first.json()["id"])) == 1


async def test_the_recipient_limit_holds_for_a_scheduled_publish(settings):
    app = create_app(replace(settings, publish_max_recipients=5))
    async with AsyncTestClient(app=app) as client:
        campaign = await create_campaign(client)
        body = {"recipients": recipients(6), "send_at": rfc3339(at(timedelta(hours=1)))}

        response = await publish(client, campaign["id"], body)

        assert response.status_code == 400
        assert "$.recipients" in response.json()["details"]


async def test_cancel_of_a_scheduled_run_skips_its_deliveries_and_removes_its_jobs(client, db):
    campaign = await create_campaign(client)
    body = {"recipients": recipients(700), "send_at": rfc3339(at(timedelta(hours=1)))}
    run = (await publish(client, campaign["id"], body)).json()
    other = (await publish(client, campaign["id"], body)).json()

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/cancel", headers=bearer()
    )

    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert (cancelled["skipped_count"], cancelled["started_at"]) == (700, None)
    assert cancelled["scheduled_for"] == run["scheduled_for"]
    reasons = await db.fetch(
        "SELECT status, reason, count(*) FROM deliveries WHERE run_id = $1 GROUP BY 1, 2",
        uuid.UUID(run["id"]),
    )
    assert [tuple(r) for r in reasons] == [("skipped", "cancelled", 700)]
    assert await waiting_jobs(db, run["id"]) == []  # gone from the queue
    assert len(await waiting_jobs(db, other["id"])) == 2  # another run's stay
    event = await db.fetchrow(
        "SELECT type, data FROM events WHERE run_id = $1", uuid.UUID(run["id"])
    )
    assert event["type"] == "run.cancelled"
    assert event["data"]["scheduled_for"] == run["scheduled_for"]


async def test_retry_of_a_scheduled_run_is_412(client):
    campaign = await create_campaign(client)
    body = {"recipients": recipients(2), "send_at": rfc3339(at(timedelta(hours=1)))}
    run = (await publish(client, campaign["id"], body)).json()

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/retry", headers=bearer()
    )

    assert response.status_code == 412
    assert response.json()["details"]["status"] == "scheduled"


async def test_ops_views_show_scheduled_runs_and_when_each_starts(client, db):
    campaign = await create_campaign(client)
    send_at = at(timedelta(hours=3))
    body = {"recipients": recipients(1100), "send_at": rfc3339(send_at)}
    run = (await publish(client, campaign["id"], body)).json()
    await publish(client, campaign["id"], {"recipients": recipients(1)})  # not scheduled

    rows = await db.fetch("SELECT * FROM ops_scheduled_runs")
    progress = await db.fetchrow(
        "SELECT status, scheduled_for FROM ops_run_progress WHERE run_id = $1",
        uuid.UUID(run["id"]),
    )

    assert len(rows) == 1
    row = rows[0]
    assert (str(row["run_id"]), row["total"], row["waiting_jobs"]) == (run["id"], 1100, 3)
    assert row["scheduled_for"] == send_at
    assert timedelta(hours=2, minutes=59) < row["starts_in"] <= timedelta(hours=3)
    assert (row["campaign_name"], row["channel"]) == (campaign["name"], "email")
    assert (progress["status"], progress["scheduled_for"]) == ("scheduled", send_at)
