"""alembic upgrade head / downgrade base on an empty database."""

from __future__ import annotations

import asyncpg
from alembic import command

from tests.conftest import alembic_config

TABLES = {
    "campaigns",
    "runs",
    "deliveries",
    "suppressions",
    "idempotency_keys",
    "delivery_job_failures",
    "events",
    "brand_rate_limits",
    "rate_buckets",
    "provider_pauses",
    "delivery_unrecorded_sends",
    "delivery_data",
    "procrastinate_jobs",
    "procrastinate_events",
    "procrastinate_workers",
    "procrastinate_periodic_defers",
    "awaited_receipts",
    "audit_events",
}

LATER_THAN_0016 = {"audit_events"}
LATER_THAN_0012 = {"delivery_data", "awaited_receipts", *LATER_THAN_0016}
LATER_THAN_0007 = {
    "brand_rate_limits",
    "rate_buckets",
    "provider_pauses",
    "delivery_unrecorded_sends",
    *LATER_THAN_0012,
}
LATER_THAN_0004 = {"delivery_job_failures", "events", *LATER_THAN_0007}
BEFORE_0016 = {"events": "run_events"}
"""Tables named otherwise before 0016 (the outbox of run events became that of every event)."""


def named_before_0016(tables: set[str]) -> set[str]:
    return {BEFORE_0016.get(table, table) for table in tables}


VIEWS_0004 = {
    "ops_run_progress",
    "ops_stuck_jobs",
    "ops_stalled_runs",
    "ops_stale_workers",
    "ops_delivery_failures",
    "ops_queue_depth",
}
VIEWS_0007 = VIEWS_0004 | {"ops_delivery_partitions", "ops_undelivered_events"}
VIEWS_0016 = VIEWS_0007 | {"ops_scheduled_runs"}
VIEWS = VIEWS_0016 | {"ops_audit"}


async def objects(url: str) -> tuple[set[str], int, int]:
    conn = await asyncpg.connect(url)
    try:
        # Tables, not partitions: those of deliveries are tested in test_partitions.py.
        tables = {
            r["relname"]
            for r in await conn.fetch(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                " AND relkind IN ('r', 'p') AND NOT relispartition"
            )
        }
        functions = await conn.fetchval(
            "SELECT count(*) FROM pg_proc WHERE proname LIKE 'procrastinate%'"
        )
        types = await conn.fetchval(
            "SELECT count(*) FROM pg_type WHERE typname LIKE 'procrastinate%' AND typtype <> 'b'"
        )
        return tables - {"alembic_version"}, functions, types
    finally:
        await conn.close()


async def test_upgrade_downgrade_upgrade(empty_database):
    config = alembic_config(empty_database)

    command.upgrade(config, "head")
    tables, functions, types = await objects(empty_database)
    assert tables == TABLES
    assert functions > 10 and types >= 3

    command.downgrade(config, "base")
    assert await objects(empty_database) == (set(), 0, 0)

    command.upgrade(config, "head")
    assert (await objects(empty_database))[0] == TABLES


async def test_0003_downgrades_to_0002_and_back(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")

    command.downgrade(config, "0002")
    assert (await objects(empty_database))[0] == TABLES - {"idempotency_keys", *LATER_THAN_0004}

    command.upgrade(config, "0003")
    assert (await objects(empty_database))[0] == TABLES - LATER_THAN_0004


async def test_0005_downgrades_to_0004_and_back(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")

    command.downgrade(config, "0004")
    assert (await objects(empty_database))[0] == TABLES - LATER_THAN_0004

    command.upgrade(config, "0005")
    assert "delivery_job_failures" in (await objects(empty_database))[0]


async def views(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT viewname FROM pg_views WHERE schemaname = 'public'")
        return {r["viewname"] for r in rows}
    finally:
        await conn.close()


async def test_0004_ops_views_downgrade_to_0003_and_back(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    assert await views(empty_database) == VIEWS

    command.downgrade(config, "0003")
    assert await views(empty_database) == set()
    assert (await objects(empty_database))[0] == TABLES - LATER_THAN_0004

    command.upgrade(config, "0004")
    assert await views(empty_database) == VIEWS_0004


async def columns(url: str, table: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
        )
        return {r["column_name"] for r in rows}
    finally:
        await conn.close()


async def test_0007_run_events_downgrade_to_0004_and_back(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    assert "retry_of" in await columns(empty_database, "runs")
    assert {"outcome", "outcome_at", "outcome_detail"} <= await columns(
        empty_database, "deliveries"
    )

    command.downgrade(config, "0004")
    assert (await objects(empty_database))[0] == TABLES - LATER_THAN_0004
    assert await views(empty_database) == VIEWS_0004
    assert "retry_of" not in await columns(empty_database, "runs")
    assert "outcome" not in await columns(empty_database, "deliveries")

    command.upgrade(config, "0007")
    assert (await objects(empty_database))[0] == named_before_0016(TABLES - LATER_THAN_0007)
    assert await views(empty_database) == VIEWS_0007


async def test_0008_schedule_downgrades_to_0007_and_back(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    conn = await asyncpg.connect(empty_database)
    try:
        campaign = await conn.fetchval(
            "INSERT INTO campaigns (brand_id, name, channel, body, created_by)"
            " VALUES ('b', 'n', 'email', 'x', 't') RETURNING id"
        )
        await conn.execute(
            "INSERT INTO runs (campaign_id, brand_id, total_recipients, created_by, status,"
            " scheduled_for) VALUES ($1, 'b', 1, 't', 'scheduled', now() + interval '1 day')",
            campaign,
        )
    finally:
        await conn.close()
    progress_0008 = await columns(empty_database, "ops_run_progress")
    assert "scheduled_for" in progress_0008
    assert "waiting_until" in await columns(empty_database, "ops_stalled_runs")

    command.downgrade(config, "0007")
    assert await views(empty_database) == VIEWS_0007
    assert "scheduled_for" not in await columns(empty_database, "runs")
    assert {"time_zone", "not_before"}.isdisjoint(await columns(empty_database, "deliveries"))
    assert "quiet_hours" not in await columns(empty_database, "campaigns")
    assert await columns(empty_database, "ops_run_progress") == progress_0008 - {"scheduled_for"}
    conn = await asyncpg.connect(empty_database)
    try:  # the scheduled run is a queued one to the older schema
        assert await conn.fetchval("SELECT status FROM runs") == "queued"
    finally:
        await conn.close()

    command.upgrade(config, "head")
    assert await views(empty_database) == VIEWS


async def test_0009_downgrades_to_0007_and_back(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    assert "priority" in await columns(empty_database, "campaigns")

    command.downgrade(config, "0007")
    assert (await objects(empty_database))[0] == named_before_0016(TABLES - LATER_THAN_0007)
    assert "priority" not in await columns(empty_database, "campaigns")

    command.upgrade(config, "0009")
    assert (await objects(empty_database))[0] == named_before_0016(
        TABLES - {"delivery_unrecorded_sends", *LATER_THAN_0012}
    )
    command.upgrade(config, "head")
    assert (await objects(empty_database))[0] == TABLES


async def test_0014_downgrades_to_0013_and_back(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    assert "source" in await columns(empty_database, "suppressions")

    command.downgrade(config, "0013")
    assert (await objects(empty_database))[0] == named_before_0016(
        TABLES - {"awaited_receipts", *LATER_THAN_0016}
    )
    assert "source" not in await columns(empty_database, "suppressions")

    command.upgrade(config, "head")
    assert (await objects(empty_database))[0] == TABLES


async def test_0016_consent_downgrades_to_0012_and_back_keeping_run_events(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    conn = await asyncpg.connect(empty_database)
    try:
        campaign = await conn.fetchval(
            "INSERT INTO campaigns (brand_id, name, channel, body, created_by, topic)"
            " VALUES ('b', 'n', 'email', 'x', 't', 'news') RETURNING id"
        )
        run = await conn.fetchval(
            "INSERT INTO runs (campaign_id, brand_id, total_recipients, created_by)"
            " VALUES ($1, 'b', 1, 't') RETURNING id",
            campaign,
        )
        await conn.execute(
            "INSERT INTO suppressions (brand_id, address, topic, reason) VALUES"
            " ('b', 'a@example.com', '', 'manual'), ('b', 'a@example.com', 'news', 'manual')"
        )
        await conn.execute(
            """
            INSERT INTO procrastinate_jobs (queue_name, task_name, lock, args, status)
            VALUES ('events', 'send_events', 'run-events:' || $1, jsonb_build_object(
                        'stream', 'run:' || $1), 'todo'),
                   ('events', 'send_events', 'events:brand:b', '{"stream": "brand:b"}', 'todo')
            """,
            str(run),
        )
        await conn.execute(
            "INSERT INTO events (stream, run_id, type, data) VALUES"
            " ('run:' || $1, $2, 'run.started', '{}'),"
            " ('brand:b', NULL, 'suppression.created', '{\"brand_id\": \"b\"}')",
            str(run),
            run,
        )
    finally:
        await conn.close()

    command.downgrade(config, "0012")
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM suppressions") == 1  # brand-wide
        assert await conn.fetchval("SELECT type FROM run_events") == "run.started"
        # The run's job is one the older release runs; the brand's went with its event.
        job = await conn.fetchrow("SELECT task_name, args FROM procrastinate_jobs")
        assert (job["task_name"], job["args"]) == ("send_run_events", f'{{"run_id": "{run}"}}')
    finally:
        await conn.close()
    assert "topic" not in await columns(empty_database, "campaigns")
    assert "events" not in (await objects(empty_database))[0]

    command.upgrade(config, "head")
    assert (await objects(empty_database))[0] == TABLES
    assert await views(empty_database) == VIEWS
    assert {"topic", "source", "run_id"} <= await columns(empty_database, "suppressions")
    assert "stream" in await columns(empty_database, "events")


async def test_0017_audit_trail_downgrades_to_0016_and_back(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")

    command.downgrade(config, "0016")
    assert (await objects(empty_database))[0] == TABLES - LATER_THAN_0016
    assert await views(empty_database) == VIEWS_0016
    conn = await asyncpg.connect(empty_database)
    try:  # its partitions and functions went with it
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname LIKE 'audit_events%'")
            == 0
        )
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname LIKE 'audit_events%'")
            == 0
        )
    finally:
        await conn.close()

    command.upgrade(config, "head")
    assert (await objects(empty_database))[0] == TABLES
    assert await views(empty_database) == VIEWS
