"""Real worker processes: two sharing a run, SIGKILL mid-run, SIGTERM drains, a second
SIGTERM aborts, and a dropped database connection."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from tests.helpers import create_campaign, database_unreachable, publish, recipients
from tests.jobs.delivery_helpers import (
    ENDED,
    assert_counters_equal_rows,
    deliveries,
    run_status,
    until,
)
from tests.servers import HttpSink, Reply

ROOT = Path(__file__).resolve().parents[2]
CONCURRENCY = 4


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink() as sink:
        yield sink


class Workers:
    """Starts `python -m jobs.worker` processes on the test database."""

    def __init__(self, database_url: str, sink: HttpSink, tmp_path: Path) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "EMAIL_PROVIDER": "webhook",
            "WEBHOOK_URL": sink.url,
            "WEBHOOK_SECRET": "s",
            "WORKER_CONCURRENCY": str(CONCURRENCY),
            "STALLED_JOB_SECONDS": "2",
            "DELIVERY_RETRY_BASE_SECONDS": "0.05",
            "LOG_LEVEL": "INFO",
        }
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with (self.tmp_path / f"worker-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "jobs.worker"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def log(self, index: int) -> str:
        return (self.tmp_path / f"worker-{index}.log").read_text()

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def workers(database_url, sink, tmp_path) -> Iterator[Workers]:
    workers = Workers(database_url, sink, tmp_path)
    yield workers
    workers.stop_all()


async def ended(db, run_id: str, seconds: float = 60) -> None:
    async with asyncio.timeout(seconds):
        while await run_status(db, run_id) not in ENDED:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.1)


def delivery_ids(sink: HttpSink) -> Counter[str]:
    """How often each delivery reached the receiver; every request must carry the
    delivery id as its Idempotency-Key."""
    for request in sink.requests:
        assert request.headers["idempotency-key"] == request.json()["delivery_id"]
    return Counter(request.json()["delivery_id"] for request in list(sink.requests))


async def sent_ids(db, run_id: str) -> set[str]:
    return {
        f"{run_id}:{row['position']}"
        for row in await deliveries(db, run_id)
        if row["status"] == "sent"
    }


async def wait_exit(process: subprocess.Popen[bytes], seconds: float) -> int:
    async with asyncio.timeout(seconds):
        while process.poll() is None:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.05)
    return process.returncode


async def test_two_workers_share_a_run_without_sending_anything_twice(settings, db, sink, workers):
    async with AsyncTestClient(create_app(replace(settings, delivery_batch_size=50))) as client:
        campaign = await create_campaign(client)
        run = (await publish(client, campaign["id"], {"recipients": recipients(600)})).json()
    sink.default = Reply(delay=0.005)

    workers.start()
    workers.start()
    await ended(db, run["id"])

    received = delivery_ids(sink)
    assert set(received) == {f"{run['id']}:{i}" for i in range(600)}
    assert max(received.values()) == 1
    assert await run_status(db, run["id"]) == "completed"
    await assert_counters_equal_rows(db, run["id"])
    chunks = [workers.log(i).count('"chunk delivered"') for i in range(2)]
    assert all(chunks) and sum(chunks) >= 12, chunks


async def test_sigkill_mid_run_loses_nothing_and_repeats_only_sends_in_flight(
    client, db, sink, workers
):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(300)})).json()
    sink.default = Reply(delay=0.02)
    victim = workers.start()
    await until(lambda: len(sink.requests) >= 60, seconds=30)

    victim.kill()
    await wait_exit(victim, 5)
    reached_before_kill = set(delivery_ids(sink))
    committed_before_kill = await sent_ids(db, run["id"])
    assert (
        committed_before_kill < reached_before_kill or committed_before_kill == reached_before_kill
    )

    workers.start()
    await ended(db, run["id"])

    received = delivery_ids(sink)
    assert set(received) == {f"{run['id']}:{i}" for i in range(300)}
    repeated = {delivery for delivery, times in received.items() if times > 1}
    assert repeated <= reached_before_kill - committed_before_kill
    assert len(repeated) <= CONCURRENCY
    assert max(received.values()) <= 2
    assert await run_status(db, run["id"]) == "completed"
    counts = await assert_counters_equal_rows(db, run["id"])
    assert counts == {"sent": 300}


async def test_sigterm_finishes_the_sends_in_flight_and_hands_the_job_back(
    client, db, sink, workers
):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(300)})).json()
    sink.default = Reply(delay=0.05)
    worker = workers.start()
    await until(lambda: len(sink.requests) >= 20, seconds=30)

    worker.send_signal(signal.SIGTERM)

    assert await wait_exit(worker, 15) == 0
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


async def test_second_sigterm_aborts_at_once_and_leaves_no_job_stuck(client, db, sink, workers):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(40)})).json()
    sink.default = Reply(delay=2)
    worker = workers.start()
    await until(lambda: len(sink.requests) >= 1, seconds=30)

    worker.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    worker.send_signal(signal.SIGTERM)

    assert await wait_exit(worker, 5) == 0
    jobs = await db.fetch("SELECT status FROM procrastinate_jobs WHERE task_name = 'deliver_batch'")
    assert [job["status"] for job in jobs] == ["todo"]
    assert await sent_ids(db, run["id"]) == set()  # the window in flight was rolled back

    sink.default = Reply()
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
