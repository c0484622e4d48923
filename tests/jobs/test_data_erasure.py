"""DELIVERY_DATA_DAYS: the hourly maintenance erases the recipients' data of the runs that
ended longer ago (and only theirs), a run's deliveries and counters stay, and a retry of
such a run is 412 `data_erased`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

import jobs.retention
from app.http.asgi import create_app
from db.pool import create_pool
from jobs.retention import maintain_deliveries
from tests.fakes.webhook import Reply
from tests.helpers import CAMPAIGNS, create_campaign, publish, walk
from tests.jobs.delivery_helpers import deliver_until_ended
from tests.tokens import bearer

DAYS = timedelta(days=7)
BODY = "Hi {{ data.name }}, see you at {{ data.time }}."


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def published(client: Any, campaign: dict[str, Any], n: int, *, data: bool = True) -> str:
    people = [
        {"person_id": f"p{i}", "recipient": f"user{i}@example.com"}
        | ({"data": {"name": f"Name {i}", "time": "15:30"}} if data else {})
        for i in range(n)
    ]
    response = await publish(client, campaign["id"], {"recipients": people})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


async def end(db: asyncpg.Connection, run_id: str, *, ago: timedelta, failed: int = 0) -> None:
    """The run completed `ago`, its first `failed` deliveries failed, the others sent."""
    run = uuid.UUID(run_id)
    await db.execute(
        "UPDATE deliveries SET attempts = 1,"
        " status = CASE WHEN position < $2 THEN 'failed' ELSE 'sent' END"
        " WHERE run_id = $1 AND status = 'pending'",
        run,
        failed,
    )
    await db.execute(
        "UPDATE runs SET status = 'completed', completed_at = now() - $2::interval,"
        " failed_count = $3, sent_count = total_recipients - skipped_count - $3 WHERE id = $1",
        run,
        ago,
        failed,
    )


async def with_data(db: asyncpg.Connection, run_id: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM delivery_data WHERE run_id = $1",
        uuid.UUID(run_id),
    )
    return count


async def test_data_of_runs_ended_more_than_the_setting_ago_is_erased_and_the_rest_kept(
    client, db, pool
):
    campaign = await create_campaign(client, body=BODY)
    old = await published(client, campaign, 5)
    recent = await published(client, campaign, 4)
    running = await published(client, campaign, 3)
    await end(db, old, ago=DAYS + timedelta(hours=1))
    await end(db, recent, ago=DAYS - timedelta(hours=1))
    before = await walk(client, f"{CAMPAIGNS}/{campaign['id']}/runs/{old}/deliveries", bearer())

    report = await maintain_deliveries(pool, None, data_retention=DAYS)

    assert report.erased_runs == 1
    assert (
        await with_data(db, old),
        await with_data(db, recent),
        await with_data(db, running),
    ) == (
        0,
        4,
        3,
    )
    erased_at = await db.fetchval("SELECT data_erased_at FROM runs WHERE id = $1", uuid.UUID(old))
    assert erased_at is not None
    # The deliveries and their listing are as they were: only the data went.
    after = await walk(client, f"{CAMPAIGNS}/{campaign['id']}/runs/{old}/deliveries", bearer())
    assert after == before and len(after) == 5
    assert (await maintain_deliveries(pool, None, data_retention=DAYS)).erased_runs == 0


async def test_with_the_clock_a_week_on_every_ended_run_is_erased_in_batches(
    client, db, pool, monkeypatch
):
    monkeypatch.setattr(jobs.retention, "ERASE_BATCH", 2)
    campaign = await create_campaign(client, body=BODY)
    runs = [await published(client, campaign, n) for n in (5, 1)]
    for run_id in runs:
        await end(db, run_id, ago=timedelta(0))
    plain = await published(client, campaign, 2, data=False)
    await end(db, plain, ago=timedelta(0))

    now = datetime.now(UTC) + DAYS + timedelta(minutes=1)
    assert (await maintain_deliveries(pool, None, data_retention=DAYS)).erased_runs == 0
    report = await maintain_deliveries(pool, None, data_retention=DAYS, now=now)

    assert report.erased_runs == 2  # a run without data is not even looked at
    assert await db.fetchval("SELECT count(*) FROM delivery_data") == 0
    marks = await db.fetch("SELECT with_data, data_erased_at FROM runs ORDER BY created_at")
    assert [(m["with_data"], m["data_erased_at"] == now) for m in marks] == [
        (True, True),
        (True, True),
        (False, False),
    ]


async def test_without_a_data_setting_the_maintenance_erases_nothing(client, db, pool):
    campaign = await create_campaign(client, body=BODY)
    run_id = await published(client, campaign, 2)
    await end(db, run_id, ago=timedelta(days=365))

    assert (await maintain_deliveries(pool, None)).erased_runs == 0
    assert await with_data(db, run_id) == 2


async def test_a_retry_is_412_data_erased_once_the_data_expired_erased_or_not(settings, db, pool):
    app = create_app(replace(settings, delivery_data_days=7))
    async with AsyncTestClient(app=app) as client:
        campaign = await create_campaign(client, body=BODY)
        erased, expired, fresh = [await published(client, campaign, 3) for _ in range(3)]
        await end(db, erased, ago=timedelta(days=8), failed=1)
        assert (await maintain_deliveries(pool, None, data_retention=DAYS)).erased_runs == 1
        await end(db, expired, ago=timedelta(days=8), failed=1)  # not erased yet
        await end(db, fresh, ago=timedelta(days=6), failed=1)
        plain_campaign = await create_campaign(client)
        plain = await published(client, plain_campaign, 3, data=False)
        await end(db, plain, ago=timedelta(days=8), failed=1)

        answers = {
            run_id: await client.post(
                f"{CAMPAIGNS}/{of['id']}/runs/{run_id}/retry", headers=bearer()
            )
            for of, run_id in [
                (campaign, erased),
                (campaign, expired),
                (campaign, fresh),
                (plain_campaign, plain),
            ]
        }

    for run_id in (erased, expired):
        assert answers[run_id].status_code == 412, answers[run_id].text
        body = answers[run_id].json()
        assert body["error"] == "data_erased"
        assert set(body["details"]) == {"completed_at"}
    # Data still kept, or never any: the retry goes, the data along.
    assert answers[fresh].status_code == 202, answers[fresh].text
    assert await with_data(db, answers[fresh].json()["id"]) == 1
    assert answers[plain].status_code == 202, answers[plain].text


async def test_a_real_run_erased_a_week_after_it_ended_cannot_be_retried(
    webhook_settings, db, pool, sink
):
    sink.replies["user1@example.com"] = Reply(status=422, body=b"mailbox full")
    async with AsyncTestClient(create_app(webhook_settings)) as client:
        campaign = await create_campaign(client, body=BODY)
        run_id = await published(client, campaign, 3)
        await deliver_until_ended(webhook_settings, db, run_id)
        # Sent side by side: in either order.
        assert sorted(r.json()["body"] for r in sink.requests if r.status == 200) == [
            "Hi Name 0, see you at 15:30.",
            "Hi Name 2, see you at 15:30.",
        ]

        later = datetime.now(UTC) + DAYS + timedelta(minutes=1)
        report = await maintain_deliveries(pool, None, data_retention=DAYS, now=later)
        retried = await client.post(
            f"{CAMPAIGNS}/{campaign['id']}/runs/{run_id}/retry", headers=bearer()
        )

    assert report.erased_runs == 1 and await with_data(db, run_id) == 0
    assert retried.status_code == 412, retried.text
    assert retried.json()["error"] == "data_erased"
