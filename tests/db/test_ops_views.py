"""The ops views of docs/ops.md, on a run put in a known state by hand."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from tests.app.test_consent import ops_queries
from tests.helpers import create_campaign, publish, recipients
from tests.tokens import bearer


async def one(db: asyncpg.Connection, sql: str, *args: Any) -> asyncpg.Record:
    rows = await db.fetch(sql, *args)
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
async def run(client, db) -> dict[str, Any]:
    """A running run of 11 recipients, 10 s old: 1 skipped at publish (invalid), 5 sent,
    2 failed ("550 no such user"), 1 pending after a transient error, 2 never tried; its
    last delivery was recorded 5 minutes ago."""
    campaign = await create_campaign(client)
    body = {"recipients": [*recipients(10), {"person_id": "x", "recipient": "nope"}]}
    response = await publish(client, campaign["id"], body)
    assert response.status_code == 202
    run: dict[str, Any] = response.json()
    run_id = uuid.UUID(run["id"])
    await db.execute(
        """
        UPDATE deliveries SET
            status = CASE WHEN position < 5 THEN 'sent' WHEN position < 7 THEN 'failed'
                          ELSE 'pending' END,
            attempts = 1,
            last_error = CASE WHEN position IN (5, 6) THEN '550 no such user'
                              WHEN position = 7 THEN 'timeout' END,
            updated_at = now() - interval '5 minutes'
        WHERE run_id = $1 AND position < 8
        """,
        run_id,
    )
    await db.execute(
        """
        UPDATE runs SET status = 'running', sent_count = 5, failed_count = 2,
                        started_at = now() - interval '10 seconds'
        WHERE id = $1
        """,
        run_id,
    )
    run["campaign"] = campaign
    return run


async def test_run_progress_counts_pending_and_rate(db, run):
    run_id = uuid.UUID(run["id"])
    # started_at 10 s before now() again, in the transaction of the view's read: now() is
    # the same in both, so the duration is exactly 10 s however late the read comes.
    async with db.transaction():
        await db.execute(
            "UPDATE runs SET started_at = now() - interval '10 seconds' WHERE id = $1", run_id
        )
        row = await one(db, "SELECT * FROM ops_run_progress WHERE run_id = $1", run_id)

    assert (row["total"], row["sent"], row["failed"], row["skipped"], row["pending"]) == (
        11, 5, 2, 1, 3,
    )  # fmt: skip
    assert (row["brand_id"], row["campaign_name"], row["channel"]) == (
        "brand-a", "Winter check-up", "email",
    )  # fmt: skip
    assert row["status"] == "running" and row["completed_at"] is None
    assert row["duration"] == timedelta(seconds=10)
    assert row["messages_per_second"] == Decimal("0.7")  # 7 sends in 10 s
    assert row["age"] >= timedelta(0)


async def test_stalled_runs_measure_idle_time_from_the_last_delivery(db, run):
    row = await one(db, "SELECT * FROM ops_stalled_runs WHERE run_id = $1", uuid.UUID(run["id"]))

    assert row["pending"] == 3
    assert timedelta(minutes=5) <= row["idle_for"] < timedelta(minutes=5, seconds=10)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM ops_stalled_runs WHERE idle_for > interval '10 minutes'"
        )
        == 0
    )


async def test_ended_runs_are_not_stalled(db, run):
    await db.execute("UPDATE runs SET status = 'cancelled' WHERE id = $1", uuid.UUID(run["id"]))

    assert await db.fetch("SELECT * FROM ops_stalled_runs") == []


async def test_delivery_failures_grouped_by_run_and_error(db, run):
    rows = await db.fetch(
        "SELECT status, error, deliveries, example_position FROM ops_delivery_failures"
        " WHERE run_id = $1 ORDER BY status",
        uuid.UUID(run["id"]),
    )

    assert [tuple(r) for r in rows] == [
        ("failed", "550 no such user", 2, 5),
        ("pending", "timeout", 1, 7),
    ]


async def plan_of(db: asyncpg.Connection, sql: str, *args: Any) -> str:
    """The plan PostgreSQL makes for `sql` when it may use any index that can answer it
    (a few test rows would otherwise make every table scan the cheapest)."""
    async with db.transaction():
        await db.execute("SET LOCAL enable_seqscan = off")
        rows = await db.fetch(f"EXPLAIN {sql}", *args)
    return "\n".join(row[0] for row in rows)


async def test_the_run_progress_query_of_ops_md_reads_no_run_that_ended_long_ago(db, run):
    # docs/ops.md's query: with `scheduled` among the statuses, the index of runs not
    # ended must cover it too, or the query reads every run ever made.
    query = """
        SELECT run_id, status FROM ops_run_progress
        WHERE status IN ('scheduled', 'queued', 'running')
           OR completed_at > now() - interval '1 day'
        ORDER BY created_at DESC"""

    plan = await plan_of(db, query)

    assert "Seq Scan on runs" not in plan, plan
    assert "runs_not_ended_idx" in plan, plan
    assert (uuid.UUID(run["id"]), "running") in [tuple(r) for r in await db.fetch(query)]


async def test_a_runs_failures_are_read_without_its_sent_deliveries(db, run):
    plan = await plan_of(
        db, "SELECT * FROM ops_delivery_failures WHERE run_id = $1", uuid.UUID(run["id"])
    )

    # The index is made on each partition, under a name of PostgreSQL's choosing.
    partitions_of_it = await db.fetch(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits"
        " WHERE inhparent = 'deliveries_errors_idx'::regclass"
    )
    assert any(f"using {index['name']} on" in plan for index in partitions_of_it), plan
    assert "_pkey on deliveries" not in plan, plan


async def test_queue_depth_counts_due_jobs_and_the_oldest_wait(db, run):
    (job_id,) = [
        r["id"]
        for r in await db.fetch(
            "SELECT id FROM procrastinate_jobs WHERE args ->> 'run_id' = $1", run["id"]
        )
    ]
    await db.execute(
        "UPDATE procrastinate_events SET at = now() - interval '1 minute' WHERE job_id = $1",
        job_id,
    )
    # A follow-up job whose backoff has not elapsed: queued, but not waiting yet.
    await db.execute(
        """
        INSERT INTO procrastinate_jobs (queue_name, task_name, args, scheduled_at)
        VALUES ('deliveries', 'deliver_batch', $1, now() + interval '1 hour')
        """,
        {"run_id": run["id"], "first": 7, "last": 7},
    )

    row = await one(
        db, "SELECT * FROM ops_queue_depth WHERE queue_name = 'deliveries' AND status = 'todo'"
    )

    assert (row["jobs"], row["due_jobs"]) == (2, 1)
    assert timedelta(minutes=1) <= row["oldest_waiting_for"] < timedelta(minutes=1, seconds=10)


async def test_stuck_jobs_and_stale_workers(db, run):
    worker_id = await db.fetchval(
        "INSERT INTO procrastinate_workers (last_heartbeat)"
        " VALUES (now() - interval '2 minutes') RETURNING id"
    )
    healthy = await db.fetchval("INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id")
    job_id = await db.fetchval(
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = $1"
        " WHERE args ->> 'run_id' = $2 RETURNING id",
        worker_id,
        run["id"],
    )
    await db.execute(
        "UPDATE procrastinate_events SET at = now() - interval '15 minutes'"
        " WHERE job_id = $1 AND type = 'started'",
        job_id,
    )

    job = await one(db, "SELECT * FROM ops_stuck_jobs WHERE doing_for > interval '10 minutes'")
    workers = {
        r["worker_id"]: r
        for r in await db.fetch("SELECT * FROM ops_stale_workers ORDER BY heartbeat_age DESC")
    }

    assert (job["job_id"], job["run_id"], job["worker_id"]) == (job_id, run["id"], worker_id)
    assert (job["first_position"], job["last_position"]) == (0, 10)
    assert timedelta(minutes=15) <= job["doing_for"] < timedelta(minutes=15, seconds=10)
    assert timedelta(minutes=2) <= job["heartbeat_age"] < timedelta(minutes=2, seconds=10)
    assert workers[worker_id]["doing_jobs"] == 1
    assert workers[worker_id]["heartbeat_age"] >= timedelta(minutes=2)
    assert workers[healthy]["doing_jobs"] == 0
    assert workers[healthy]["heartbeat_age"] < timedelta(seconds=10)


async def test_the_audit_queries_of_ops_md_say_who_published_a_run_and_changed_a_suppression(
    client, db
):
    campaign = await create_campaign(client)
    published = await publish(client, campaign["id"], {"recipients": recipients(2)}, sub="alice")
    run_id = published.json()["id"]
    cancel = f"/v1/messaging/campaigns/{campaign['id']}/runs/{run_id}/cancel"
    assert (await client.post(cancel, headers=bearer(sub="bob"))).status_code == 200
    suppression = "/v1/messaging/brands/brand-a/suppressions/ann@example.com"
    for method, sub in (("PUT", "carol"), ("DELETE", "dave")):
        response = await client.request(
            method, suppression, json={"reason": "manual"} if method == "PUT" else None,
            headers={**bearer(sub=sub), "X-Request-ID": f"req-{sub}"},
        )  # fmt: skip
        assert response.is_success, response.text

    published_by, suppression_changes, by_caller, campaign_changes, behind = ops_queries(
        "11. Who changed what"
    )

    # Who published this run (and who cancelled it).
    rows = await db.fetch(published_by.replace("<run_id>", run_id))
    assert [(r["action"], r["actor"], r["request_id"] is not None) for r in rows] == [
        ("run.published", "alice", True),
        ("run.cancelled", "bob", True),
    ]
    # Every change to this suppression.
    rows = await db.fetch(suppression_changes.replace("<brand_id>", "brand-a"))
    assert [(r["action"], r["actor"], r["fields"], r["topic"]) for r in rows] == [
        ("suppression.created", "carol", ["reason", "source", "topic"], None),
        ("suppression.deleted", "dave", ["reason", "source", "topic"], None),
    ]
    assert [r["action"] for r in await db.fetch(by_caller.replace("<sub>", "dave"))] == [
        "suppression.deleted"
    ]
    rows = await db.fetch(campaign_changes.replace("<campaign_id>", campaign["id"]))
    assert [r["action"] for r in rows] == ["campaign.created", "campaign.activated"]
    assert await db.fetchval(behind) is False
    # Read by the (brand_id, target_id, ...) index of each month, however long the trail.
    plan = await plan_of(db, suppression_changes.replace("<brand_id>", "brand-a"))
    assert "brand_id_target_id" in plan and "Seq Scan" not in plan, plan
