"""Real worker processes: two sharing a run, SIGKILL mid-run, SIGTERM drains, a second
SIGTERM aborts, and a dropped database connection."""

from __future__ import annotations

import asyncio
import signal
import uuid
from dataclasses import replace

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from app.http.asgi import create_app
from tests.fakes.server import free_port
from tests.fakes.webhook import Rendezvous, Reply
from tests.helpers import create_campaign, database_unreachable, publish, recipients
from tests.jobs.delivery_helpers import (
    assert_counters_equal_rows,
    deliveries,
    ended,
    run_status,
    until,
)
from tests.jobs.processes import CONCURRENCY, STALLED, delivery_ids

JOBS = 4  # WORKER_JOBS, the default
ROUND_SLACK = 1.5
"""What one recovery round may take beyond its schedule on this shared 2-core machine: its
queries take milliseconds, but the survivor's loop also runs 4 jobs' windows, and the
machine swings 2-3x (a round once took 0.5 s more). A requeue that depended on anything
but the recovery loop would come much later (procrastinate alone never requeues it)."""


async def sent_ids(db, run_id: str) -> set[str]:
    return {
        f"{run_id}:{row['position']}"
        for row in await deliveries(db, run_id)
        if row["status"] == "sent"
    }


async def test_two_workers_share_a_run_without_sending_anything_twice(settings, db, sink, workers):
    # Both workers take part by construction: one job each at a time, both LISTENing
    # before the publish, and the first sends held until a second job's arrive.
    workers.env["WORKER_JOBS"] = "1"
    await workers.start_ready()
    await workers.start_ready()
    sink.default = Reply(delay=0.005)
    sink.rendezvous = Rendezvous(lambda message: int(message["delivery_id"].split(":")[1]) // 50)
    async with AsyncTestClient(create_app(replace(settings, delivery_batch_size=50))) as client:
        campaign = await create_campaign(client)
        run = (await publish(client, campaign["id"], {"recipients": recipients(600)})).json()

    await ended(db, run["id"])

    received = delivery_ids(sink)
    assert set(received) == {f"{run['id']}:{i}" for i in range(600)}
    assert max(received.values()) == 1
    assert await run_status(db, run["id"]) == "completed"
    await assert_counters_equal_rows(db, run["id"])
    assert sink.rendezvous.met.is_set(), "the two workers' sends never met"
    chunks = [workers.log(i).count('"chunk delivered"') for i in range(2)]
    assert all(chunks) and sum(chunks) >= 12, chunks


async def held_jobs(db) -> list[asyncpg.Record]:
    """The deliver_batch jobs `doing` now, with their worker and run."""
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT id, worker_id, args->>'run_id' AS run_id FROM procrastinate_jobs"
        " WHERE status = 'doing' AND task_name = 'deliver_batch'"
    )
    return rows


async def test_sigkill_of_a_worker_holding_four_jobs_of_two_runs_loses_nothing(
    settings, db, sink, workers
):
    async with AsyncTestClient(create_app(replace(settings, delivery_batch_size=50))) as client:
        campaign = await create_campaign(client)
        runs = [
            (await publish(client, campaign["id"], {"recipients": recipients(150)})).json()
            for _ in range(2)
        ]  # 6 jobs of 50; runs take turns: the first worker takes 2 of each
    everything = {f"{run['id']}:{i}" for run in runs for i in range(150)}
    sink.default = Reply(delay=0.05)
    victim = workers.start()
    async with asyncio.timeout(30):
        while len(held := await held_jobs(db)) < JOBS or len(sink.requests) < 20:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    # Every send is held from now on: the victim keeps its jobs (none is near its 50th
    # send) however long the survivor takes to start on this machine.
    sink.gate.clear()
    victim_id = held[0]["worker_id"]
    await workers.start_ready()

    victim.kill()
    await workers.wait_exit(victim, 5)
    killed_at = await db.fetchval("SELECT clock_timestamp()")
    sink.gate.set()
    held = [job for job in await held_jobs(db) if job["worker_id"] == victim_id]
    assert len(held) >= JOBS and len({job["run_id"] for job in held}) >= 2
    reached_before_kill = set(delivery_ids(sink))
    committed_before_kill = set().union(*[await sent_ids(db, run["id"]) for run in runs])
    assert committed_before_kill <= reached_before_kill

    for run in runs:
        await ended(db, run["id"])

    received = delivery_ids(sink)
    assert set(received) == everything
    repeated = {delivery for delivery, times in received.items() if times > 1}
    assert repeated <= reached_before_kill - committed_before_kill  # only sends in flight
    assert len(repeated) <= JOBS * CONCURRENCY and max(received.values()) <= 2
    for run in runs:
        assert await run_status(db, run["id"]) == "completed"
        assert await assert_counters_equal_rows(db, run["id"]) == {"sent": 150}
    # Every job the dead worker held was back in the queue within STALLED_JOB_SECONDS and
    # one round of the survivor's recovery loop.
    requeued_at = await db.fetch(
        "SELECT job_id, min(at) AS at FROM procrastinate_events"
        " WHERE type = 'deferred_for_retry' AND job_id = ANY($1::bigint[]) AND at > $2"
        " GROUP BY job_id",
        [job["id"] for job in held],
        killed_at,
    )
    assert len(requeued_at) == len(held)
    slowest = max((row["at"] - killed_at).total_seconds() for row in requeued_at)
    assert slowest <= STALLED + STALLED / 3 + ROUND_SLACK, slowest


async def test_sigterm_finishes_the_sends_in_flight_and_hands_the_job_back(
    client, db, sink, workers
):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(300)})).json()
    sink.default = Reply(delay=0.05)
    worker = workers.start()
    await until(lambda: len(sink.requests) >= 20, seconds=30)

    worker.send_signal(signal.SIGTERM)

    assert await workers.wait_exit(worker, 15) == 0
    # Every send that reached the receiver was recorded before the worker left.
    assert set(delivery_ids(sink)) == await sent_ids(db, run["id"])
    assert await run_status(db, run["id"]) == "running"
    jobs = await db.fetch("SELECT status FROM procrastinate_jobs WHERE task_name = 'deliver_batch'")
    assert [job["status"] for job in jobs] == ["todo"]

    sink.default = Reply()
    workers.start()
    await ended(db, run["id"])
    received = delivery_ids(sink)
    assert len(received) == 300 and max(received.values()) == 1
    await assert_counters_equal_rows(db, run["id"])


async def test_a_send_hanging_past_the_stall_limit_during_sigterm_never_runs_twice(
    client, db, sink, workers
):
    """procrastinate stops its heartbeat when a graceful stop begins; the worker's own
    heartbeat goes on until its jobs end, so the other worker never takes the job over."""
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(8)})).json()
    sink.replies["user0@example.com"] = Reply(delay=STALLED * 4)
    holder = workers.start()
    await until(lambda: len(sink.requests) >= 1, seconds=30)
    [job] = await held_jobs(db)
    other = await workers.start_ready()

    holder.send_signal(signal.SIGTERM)

    # The job stays the holder's until the hung window has committed (user0 sent): only
    # then is it handed back, and may the other worker take it.
    async with asyncio.timeout(STALLED * 6):
        while (state := await db.fetchrow(  # noqa: ASYNC110 - another process
            "SELECT j.status, j.worker_id, d.status AS user0 FROM procrastinate_jobs j,"
            " deliveries d WHERE j.id = $1 AND d.run_id = $2 AND d.position = 0",
            job["id"], uuid.UUID(run["id"]),
        )) and (state["status"], state["worker_id"]) == ("doing", job["worker_id"]):  # fmt: skip
            await asyncio.sleep(0.05)
    assert state["user0"] == "sent", dict(state)
    assert await workers.wait_exit(holder, STALLED * 2) == 0
    await ended(db, run["id"])
    assert other.poll() is None
    assert "requeued the job of a dead worker" not in workers.log(1)
    received = delivery_ids(sink)
    assert len(received) == 8 and max(received.values()) == 1
    await assert_counters_equal_rows(db, run["id"])


async def test_second_sigterm_aborts_at_once_and_leaves_no_job_stuck(client, db, sink, workers):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(40)})).json()
    # Every send is held, unanswered: the window stays in flight until the abort, however
    # late a loaded machine delivers the second SIGTERM.
    sink.gate.clear()
    worker = workers.start()
    await until(lambda: len(sink.requests) >= 1, seconds=30)

    worker.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    worker.send_signal(signal.SIGTERM)

    assert await workers.wait_exit(worker, 5) == 0
    sink.gate.set()
    jobs = await db.fetch("SELECT status FROM procrastinate_jobs WHERE task_name = 'deliver_batch'")
    assert [job["status"] for job in jobs] == ["todo"]
    assert await sent_ids(db, run["id"]) == set()  # the window in flight was rolled back

    workers.start()
    await ended(db, run["id"])
    received = delivery_ids(sink)
    assert len(received) == 40
    assert sum(times - 1 for times in received.values()) <= CONCURRENCY
    await assert_counters_equal_rows(db, run["id"])


async def test_worker_reconnects_after_its_database_connections_drop(client, db, sink, workers):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(200)})).json()
    sink.default = Reply(delay=0.02)
    worker = workers.start()
    await until(lambda: len(sink.requests) >= 20, seconds=30)

    dropped = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )

    assert dropped >= 1
    await ended(db, run["id"])
    assert worker.poll() is None  # still running: it did not die with its connections
    received = delivery_ids(sink)
    assert set(received) == {f"{run['id']}:{i}" for i in range(200)}
    assert sum(times - 1 for times in received.values()) <= CONCURRENCY
    await assert_counters_equal_rows(db, run["id"])
    assert uuid.UUID(run["id"])


async def test_worker_outlives_a_database_outage(client, db, sink, workers):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(200)})).json()
    sink.default = Reply(delay=0.02)
    worker = workers.start()
    await until(lambda: len(sink.requests) >= 20, seconds=30)

    async with database_unreachable(db):
        await asyncio.sleep(4)  # longer than a heartbeat, a fetch and a restart delay
        assert worker.poll() is None

    await ended(db, run["id"])
    assert worker.poll() is None
    received = delivery_ids(sink)
    assert set(received) == {f"{run['id']}:{i}" for i in range(200)}
    assert sum(times - 1 for times in received.values()) <= CONCURRENCY
    await assert_counters_equal_rows(db, run["id"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_while_the_database_is_away_stops_the_worker_cleanly(workers, signum):
    workers.env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    worker = workers.start()
    await until(lambda: workers.log(0).count("starting the worker again") >= 2, seconds=30)

    worker.send_signal(signum)

    assert await workers.wait_exit(worker, 5) == 0
    assert "Traceback" not in workers.log(0)
