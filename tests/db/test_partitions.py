"""`deliveries` partitioned by month of a UUIDv7 run id: the migration of a populated
table, the ids, and the maintenance that keeps partitions ahead of time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from alembic import command

import jobs.retention
from db.ids import uuid7, uuid7_unix_ms
from db.pool import create_pool
from db.queue import MAINTENANCE_QUEUE
from jobs.app import app as procrastinate_app
from jobs.retention import PartitionsBehind, add_months, maintain_deliveries, month_of
from jobs.tasks import maintain_deliveries_task
from tests.conftest import alembic_config
from tests.helpers import create_campaign, publish, recipients
from tests.tokens import bearer

NOW = datetime.now(UTC)


def partition_name(moment: datetime) -> str:
    return f"deliveries_{moment.astimezone(UTC):%Y_%m}"


async def month_partitions(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT partition FROM ops_delivery_partitions WHERE month IS NOT NULL")
    return sorted(row["partition"] for row in rows)


async def test_python_and_sql_make_the_same_kind_of_uuid7(db):
    at = datetime(2027, 3, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    ms = int(at.timestamp() * 1000)
    ours = uuid7(ms)
    theirs: uuid.UUID = await db.fetchval("SELECT uuid_v7($1)", at)

    for value in (ours, theirs):
        assert value.version == 7 and value.variant == uuid.RFC_4122
        assert uuid7_unix_ms(value) == ms
    assert await db.fetchval("SELECT uuid_v7_time($1)", ours) == at
    # Bounds: the floor of a millisecond sorts before every id of it, and after the last.
    floor = await db.fetchval("SELECT uuid_v7_floor($1)", at)
    assert floor <= ours and floor <= theirs
    assert await db.fetchval(
        "SELECT uuid_v7($1) < uuid_v7_floor($2)", at, at + timedelta(0, 0, 0, 1)
    )
    assert len({uuid7(ms) for _ in range(1000)}) == 1000


async def test_publish_makes_a_uuid7_run_whose_deliveries_are_in_this_months_partition(client, db):
    campaign = await create_campaign(client)
    response = await publish(client, campaign["id"], {"recipients": recipients(3)})
    run_id = uuid.UUID(response.json()["id"])

    assert run_id.version == 7
    made = datetime.fromtimestamp(uuid7_unix_ms(run_id) / 1000, UTC)
    assert abs(made - datetime.now(UTC)) < timedelta(minutes=1)
    tables = await db.fetch(
        "SELECT DISTINCT tableoid::regclass::text AS t FROM deliveries WHERE run_id = $1", run_id
    )
    assert [row["t"] for row in tables] == [partition_name(made)]


async def test_publish_with_an_idempotency_key_makes_a_uuid7_run_too(client):
    campaign = await create_campaign(client)
    response = await client.post(
        f"/v1/messaging/campaigns/{campaign['id']}/publish",
        json={"recipients": recipients(2)},
        headers={**bearer(), "Idempotency-Key": "k1"},
    )
    assert response.status_code == 202
    assert uuid.UUID(response.json()["id"]).version == 7


_IN_400_DAYS = uuid7(int((NOW + timedelta(days=400)).timestamp() * 1000))
LEGACY_IN_WINDOW = uuid.UUID(_IN_400_DAYS.hex[:12] + "4000800000000000000a")
"""A random (v4) run id of before the migration that happens to name a month to come."""


async def test_the_migration_keeps_every_row_of_a_populated_table(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "0004")
    conn = await asyncpg.connect(empty_database)
    try:
        campaign_id = await conn.fetchval(
            "INSERT INTO campaigns (brand_id, name, channel, body, created_by, status)"
            " VALUES ('brand-a', 'n', 'email', 'b', 'me', 'active') RETURNING id"
        )
        # Random (v4) ids as before, but for their first digit: one in about 900 random ids
        # names a month of the next ten years (LEGACY_IN_WINDOW is the one that does).
        run_ids = [uuid.UUID("f" + uuid.uuid4().hex[1:]) for _ in range(40)] + [LEGACY_IN_WINDOW]
        await conn.executemany(
            "INSERT INTO runs (id, campaign_id, brand_id, total_recipients, sent_count,"
            " status, created_by) VALUES ($1, $2, 'brand-a', 25, 5, 'running', 'me')",
            [(run_id, campaign_id) for run_id in run_ids],
        )
        await conn.execute(
            """
            INSERT INTO deliveries (run_id, position, person_id, recipient, status, reason,
                                    attempts, last_error, provider_message_id, sent_at, updated_at)
            SELECT r.id, p, 'p' || p, 'u' || p || '@example.com',
                   CASE WHEN p < 5 THEN 'sent' WHEN p = 5 THEN 'skipped' ELSE 'pending' END,
                   CASE WHEN p = 5 THEN 'duplicate' END, p % 3, 'e' || p, 'm' || p,
                   now() - p * interval '1 minute', now()
            FROM runs r, generate_series(0, 24) p
            """
        )
        before = sorted(map(tuple, await conn.fetch("SELECT * FROM deliveries")))
        assert len(before) == 41 * 25

        command.upgrade(config, "head")

        # Every row, as it was (columns later migrations added come after, empty).
        after = sorted(
            tuple(row)[: len(before[0])] for row in await conn.fetch("SELECT * FROM deliveries")
        )
        assert after == before
        places = {
            row["run_id"]: row["t"]
            for row in await conn.fetch(
                "SELECT DISTINCT run_id, tableoid::regclass::text AS t FROM deliveries"
            )
        }
        in_window = datetime.fromtimestamp(uuid7_unix_ms(LEGACY_IN_WINDOW) / 1000, UTC)
        assert places.pop(LEGACY_IN_WINDOW) == partition_name(in_window)
        assert set(places.values()) == {"deliveries_legacy"}
        months = await month_partitions(conn)
        ahead = [f"deliveries_{add_months(month_of(NOW), n):%Y_%m}" for n in range(4)]
        assert months[:4] == ahead
        assert partition_name(in_window) in months
        # The ops views read the new table; a legacy run is listed as before.
        stalled = await conn.fetch("SELECT * FROM ops_stalled_runs")
        assert len(stalled) == 41 and {row["pending"] for row in stalled} == {20}
        # A legacy run's deliveries can still be claimed and updated by a worker.
        updated = await conn.execute(
            "UPDATE deliveries SET status = 'sent' WHERE run_id = $1 AND position = 6",
            run_ids[0],
        )
        assert updated == "UPDATE 1"
        # JIT is off for the database's sessions (docs/adr/0034-ops-indexes-and-jit.md).
        fresh = await asyncpg.connect(empty_database)
        assert await fresh.fetchval("SHOW jit") == "off"
        await fresh.close()
        # A new month attaches without violating the legacy partition.
        await conn.execute("SELECT deliveries_ensure_partition($1)", add_months(month_of(NOW), 30))

        command.downgrade(config, "0004")

        rows = sorted(map(tuple, await conn.fetch("SELECT * FROM deliveries")))
        assert len(rows) == len(before)
        assert await conn.fetchval("SELECT count(*) FROM pg_inherits") == 0
        assert await conn.fetchval("SELECT count(*) FROM ops_stalled_runs") == 41
    finally:
        await conn.close()


@pytest.fixture
async def pool(database_url):
    pool = await create_pool(database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_the_maintenance_makes_partitions_months_ahead(db, pool):
    later = NOW + timedelta(days=200)
    before = set(await month_partitions(db))

    report = await maintain_deliveries(pool, None, now=later)

    after = set(await month_partitions(db))
    expected = {f"deliveries_{add_months(month_of(later), n):%Y_%m}" for n in range(4)}
    assert expected <= after
    assert set(report.created) == after - before == expected - before
    assert report.created  # 200 days on, months were missing
    # Run again: nothing to do.
    assert (await maintain_deliveries(pool, None, now=later)).created == []


async def test_the_maintenance_fails_loudly_when_it_cannot_make_partitions_ahead(
    db, pool, database_url, monkeypatch
):
    monkeypatch.setattr(jobs.retention, "LOCK_TIMEOUT", timedelta(milliseconds=100))
    monkeypatch.setattr(jobs.retention, "DDL_ATTEMPTS", 1)
    blocker = await asyncpg.connect(database_url)
    try:
        async with blocker.transaction():
            # A long transaction holding `deliveries`: no partition can be attached.
            await blocker.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(PartitionsBehind, match="partitions missing"):
                await maintain_deliveries(pool, None, now=NOW + timedelta(days=200))
    finally:
        await blocker.close()


async def test_the_periodic_maintenance_runs_in_a_worker(db, database_url):
    registered = {
        t.task.name: (t.cron, t.task.queue)
        for t in procrastinate_app.periodic_registry.periodic_tasks.values()
    }
    assert registered["maintain_deliveries"] == ("7 * * * *", MAINTENANCE_QUEUE)
    await db.execute(
        "SELECT deliveries_drop_partition($1)", partition_name(NOW + timedelta(days=62))
    )
    assert partition_name(NOW + timedelta(days=62)) not in await month_partitions(db)
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        async with procrastinate_app.open_async(pool):
            await maintain_deliveries_task.defer_async(timestamp=0)
            await procrastinate_app.run_worker_async(
                queues=[MAINTENANCE_QUEUE], wait=False, install_signal_handlers=False
            )
    finally:
        await pool.close()

    assert partition_name(NOW + timedelta(days=62)) in await month_partitions(db)
    job = await db.fetchrow(
        "SELECT status FROM procrastinate_jobs WHERE task_name = 'maintain_deliveries'"
    )
    assert job["status"] == "succeeded"
