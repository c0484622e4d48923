"""DELIVERY_RETENTION_DAYS: the maintenance drops whole month partitions of `deliveries`,
waits for (or goes run by run around) a run still to keep, and the API says 410."""

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
from jobs.retention import add_months, maintain_deliveries, month_of, month_start
from tests.helpers import CAMPAIGNS, create_campaign
from tests.tokens import bearer

NOW = datetime.now(UTC)
RETENTION = timedelta(days=30)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
async def campaign(client: Any) -> dict[str, Any]:
    return await create_campaign(client)


async def add_run(
    db: asyncpg.Connection,
    campaign: dict[str, Any],
    *,
    made_at: datetime,
    ended_at: datetime | None,
    total: int = 20,
    run_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A run made at `made_at` (its UUIDv7 says so), ended at `ended_at` (None: still
    running), with `total` deliveries: every one sent if it ended, half if not."""
    status = "running" if ended_at is None else "completed"
    sent = total if ended_at is not None else total // 2
    new_id: uuid.UUID = await db.fetchval(
        """
        INSERT INTO runs (id, campaign_id, brand_id, status, total_recipients, sent_count,
                          started_at, completed_at, created_by, created_at)
        VALUES (coalesce($7, uuid_v7($3)), $1, 'brand-a', $4, $2, $5, $3, $6, 'test', $3)
        RETURNING id
        """,
        uuid.UUID(campaign["id"]), total, made_at, status, sent, ended_at, run_id,
    )  # fmt: skip
    await db.execute(
        """
        INSERT INTO deliveries (run_id, position, person_id, recipient, status, attempts)
        SELECT $1, p, 'p' || p, 'user' || p || '@example.com',
               CASE WHEN p < $3 THEN 'sent' ELSE 'pending' END, 1
        FROM generate_series(0, $2 - 1) p
        """,
        new_id, total, sent,
    )  # fmt: skip
    return new_id


async def ensure_months(db: asyncpg.Connection, *months: int) -> None:
    """The partitions of these months (relative to this one) exist."""
    for n in months:
        await db.execute("SELECT deliveries_ensure_partition($1)", add_months(month_of(NOW), n))


async def partitions(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'deliveries'::regclass"
    )
    return {row["relname"] for row in rows}


async def delivery_count(db: asyncpg.Connection, run_id: uuid.UUID) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM deliveries WHERE run_id = $1", run_id)
    return count


def name_of(month_offset: int) -> str:
    return f"deliveries_{add_months(month_of(NOW), month_offset):%Y_%m}"


@pytest.fixture
async def retention_client(settings: Any) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(replace(settings, delivery_retention_days=RETENTION.days))
    async with AsyncTestClient(app=app) as client:
        yield client


async def listing(client: Any, campaign: dict[str, Any], run_id: uuid.UUID) -> Any:
    return await client.get(
        f"{CAMPAIGNS}/{campaign['id']}/runs/{run_id}/deliveries", headers=bearer()
    )


async def test_retention_drops_the_old_month_whole_and_keeps_the_next_across_the_boundary(
    db, pool, campaign, retention_client
):
    await ensure_months(db, -3, -2)
    boundary = month_start(add_months(month_of(NOW), -2))
    # Neighbours across the boundary: the last millisecond of one month, the first of the next.
    old = await add_run(
        db, campaign, made_at=boundary - timedelta(milliseconds=1), ended_at=boundary
    )
    # Made in the later month, delivered until recently (a long run): within retention.
    recent = await add_run(db, campaign, made_at=boundary, ended_at=NOW - timedelta(days=2))
    counters = await db.fetchrow("SELECT * FROM runs WHERE id = $1", old)

    report = await maintain_deliveries(pool, RETENTION)

    assert report.dropped == [name_of(-3)]
    assert name_of(-3) not in await partitions(db)
    assert name_of(-2) in await partitions(db)
    assert await delivery_count(db, old) == 0
    assert await delivery_count(db, recent) == 20
    # The run row and its counters stay; only its deliveries left.
    after = await db.fetchrow("SELECT * FROM runs WHERE id = $1", old)
    assert counters["deliveries_purged_at"] is None
    assert after["deliveries_purged_at"] is not None
    assert {**after, "deliveries_purged_at": None} == dict(counters)
    assert after["sent_count"] == 20 and after["status"] == "completed"
    progress = await db.fetchrow("SELECT * FROM ops_run_progress WHERE run_id = $1", old)
    assert (progress["total"], progress["sent"], progress["pending"]) == (20, 20, 0)

    gone = await listing(retention_client, campaign, old)
    assert gone.status_code == 410
    assert gone.json()["error"] == "gone"
    assert set(gone.json()) == {"error", "message", "details"}
    kept = await listing(retention_client, campaign, recent)
    assert kept.status_code == 200
    assert len(kept.json()["items"]) == 20
    run = await retention_client.get(f"{CAMPAIGNS}/{campaign['id']}/runs/{old}", headers=bearer())
    assert run.status_code == 200
    assert run.json()["sent_count"] == 20


async def test_a_running_run_keeps_its_old_partition_while_expired_runs_there_go_in_batches(
    db, pool, campaign, retention_client, monkeypatch
):
    monkeypatch.setattr(jobs.retention, "DELETE_BATCH", 7)
    await ensure_months(db, -4)
    made = month_start(add_months(month_of(NOW), -4)) + timedelta(days=3)
    running = await add_run(db, campaign, made_at=made, ended_at=None)
    expired = [
        await add_run(db, campaign, made_at=made + timedelta(hours=i), ended_at=made, total=45)
        for i in range(1, 4)
    ]

    report = await maintain_deliveries(pool, RETENTION)

    assert report.dropped == []
    assert report.waiting == [name_of(-4)]
    assert name_of(-4) in await partitions(db)
    assert await delivery_count(db, running) == 20
    for run_id in expired:
        assert await delivery_count(db, run_id) == 0
        assert await db.fetchval(
            "SELECT deliveries_purged_at IS NOT NULL FROM runs WHERE id = $1", run_id
        )
    assert report.purged_runs == 3
    stalled = await db.fetchrow("SELECT * FROM ops_stalled_runs WHERE run_id = $1", running)
    assert stalled["pending"] == 10
    assert (await listing(retention_client, campaign, running)).status_code == 200
    assert (await listing(retention_client, campaign, expired[0])).status_code == 410

    # Once the running run ended and expired too, the partition goes whole.
    await db.execute(
        "UPDATE runs SET status = 'completed', completed_at = $2 WHERE id = $1", running, made
    )
    report = await maintain_deliveries(pool, RETENTION)
    assert report.dropped == [name_of(-4)]
    assert name_of(-4) not in await partitions(db)


async def test_a_month_waits_while_a_run_in_it_ended_within_retention(db, pool, campaign):
    await ensure_months(db, -1)
    made = month_start(add_months(month_of(NOW), -1))
    old = await add_run(db, campaign, made_at=made, ended_at=made + timedelta(hours=1))
    young = await add_run(db, campaign, made_at=made, ended_at=NOW - timedelta(days=1))
    # The cutoff falls a day before last month's end: `old` expired, `young` did not.
    retention = NOW - month_start(month_of(NOW)) + timedelta(days=1)

    report = await maintain_deliveries(pool, retention)

    # Last month is not entirely past the cutoff: nothing goes yet, not even one by one.
    assert report.dropped == [] and report.purged_runs == 0
    assert name_of(-1) in await partitions(db)
    where = "SELECT DISTINCT tableoid::regclass::text FROM deliveries WHERE run_id = ANY($1)"
    assert await db.fetchval(where, [old, young]) == name_of(-1)
    assert await delivery_count(db, old) == 20
    assert await delivery_count(db, young) == 20


async def test_legacy_runs_leave_one_by_one(db, pool, campaign):
    # Runs from before UUIDv7: random ids, their deliveries in the legacy partition.
    expired = await add_run(
        db, campaign, made_at=NOW - timedelta(days=90), ended_at=NOW - timedelta(days=89),
        run_id=uuid.UUID("00000000-0000-4000-8000-0000000000aa"),
    )  # fmt: skip
    kept = await add_run(
        db, campaign, made_at=NOW - timedelta(days=90), ended_at=NOW - timedelta(days=2),
        run_id=uuid.UUID("f0000000-0000-4000-8000-0000000000bb"),
    )  # fmt: skip
    assert (
        await db.fetchval(
            "SELECT DISTINCT tableoid::regclass::text FROM deliveries WHERE run_id = ANY($1)",
            [expired, kept],
        )
        == "deliveries_legacy"
    )

    report = await maintain_deliveries(pool, RETENTION)

    assert report.purged_runs == 1
    assert await delivery_count(db, expired) == 0
    assert await delivery_count(db, kept) == 20


async def test_without_retention_nothing_is_removed(db, pool, campaign, client):
    await ensure_months(db, -6)
    made = month_start(add_months(month_of(NOW), -6))
    run_id = await add_run(db, campaign, made_at=made, ended_at=made)

    report = await maintain_deliveries(pool, None)

    assert report.dropped == [] and report.purged_runs == 0
    assert name_of(-6) in await partitions(db)
    assert await delivery_count(db, run_id) == 20
    assert (await listing(client, campaign, run_id)).status_code == 200


async def test_the_listing_is_410_as_soon_as_the_run_is_past_retention(
    db, campaign, retention_client
):
    # The maintenance has not run: the rows are still there, the API already says gone.
    run_id = await add_run(
        db, campaign, made_at=NOW - timedelta(days=31), ended_at=NOW - timedelta(days=31)
    )
    response = await listing(retention_client, campaign, run_id)

    assert response.status_code == 410
    assert response.json()["details"]["completed_at"].startswith(
        (NOW - timedelta(days=31)).date().isoformat()
    )
    assert await delivery_count(db, run_id) == 20
