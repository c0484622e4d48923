"""Running real workers against a test database, and reading what they did."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg

from app.core.settings import Settings
from db.procrastinate import AsyncpgConnector
from jobs.app import app
from jobs.worker import run_worker
from tests.waiting import PATIENCE, within

ENDED = ("completed", "cancelled")


async def drain(settings: Settings, **options: Any) -> None:
    """An in-process worker that stops when nothing is due (run_worker's wait=False)."""
    worker = run_worker(settings, wait=False, **options)
    await within(PATIENCE, worker, "the worker's end, nothing left due")


async def work_until(
    settings: Settings,
    condition: Callable[[], Awaitable[bool]],
    seconds: float = 30,
    what: str = "the condition",
) -> None:
    """Run in-process workers that stop when nothing is due, one after the other, until
    `condition()` holds (follow-up jobs of transient failures, retries of events, become
    due a little later): `what`, `seconds` at most."""

    async def rounds() -> None:
        while not await condition():
            await run_worker(settings, wait=False)
            await asyncio.sleep(0.02)

    # Not asyncio.timeout: a cancelled worker waits for its jobs, then its pool.
    await within(seconds, rounds(), what)


async def deliver_until_ended(settings: Settings, db: asyncpg.Connection, run_id: str) -> None:
    """Run in-process workers until the run ended (see `work_until`). 30 s at most."""

    async def run_ended() -> bool:
        return await run_status(db, run_id) in ENDED

    await work_until(settings, run_ended, what=f"the end of run {run_id}")


@asynccontextmanager
async def running_worker(settings: Settings, **options: Any) -> AsyncIterator[asyncio.Task[None]]:
    """An in-process worker that waits for jobs (scheduled ones too) until the block ends;
    entered once it LISTENs, so a job deferred from then on is announced to it at once."""
    worker = asyncio.create_task(run_worker(settings, **options))
    try:
        async with asyncio.timeout(30):
            while not cast(AsyncpgConnector, app.connector).listening.is_set():
                if worker.done():
                    worker.result()  # its error, if it failed to start
                    raise RuntimeError("the worker ended before it listened")
                await asyncio.sleep(0.01)
        yield worker
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await within(PATIENCE, worker, "the worker's end once cancelled")


async def ended(db: asyncpg.Connection, run_id: str, seconds: float = PATIENCE) -> str:
    """Wait for the run to end, whoever delivers it; returns its status."""
    async with asyncio.timeout(seconds):
        while (status := await run_status(db, run_id)) not in ENDED:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return status


async def until(condition: Callable[[], bool], seconds: float = PATIENCE) -> None:
    """Wait for something another thread or process does (a test server receiving)."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - no event crosses from that thread
            await asyncio.sleep(0.01)


async def run_status(db: asyncpg.Connection, run_id: str) -> str:
    status: str = await db.fetchval("SELECT status FROM runs WHERE id = $1", uuid.UUID(run_id))
    return status


async def run_row(db: asyncpg.Connection, run_id: str) -> asyncpg.Record:
    row: asyncpg.Record = await db.fetchrow("SELECT * FROM runs WHERE id = $1", uuid.UUID(run_id))
    return row


async def deliveries(db: asyncpg.Connection, run_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT * FROM deliveries WHERE run_id = $1 ORDER BY position", uuid.UUID(run_id)
    )
    return rows


async def assert_counters_equal_rows(db: asyncpg.Connection, run_id: str) -> dict[str, Any]:
    """The run's counters are the truth of its delivery rows; returns the counts."""
    run = await run_row(db, run_id)
    counts = {
        row["status"]: row["n"]
        for row in await db.fetch(
            "SELECT status, count(*) AS n FROM deliveries WHERE run_id = $1 GROUP BY status",
            uuid.UUID(run_id),
        )
    }
    assert run["sent_count"] == counts.get("sent", 0)
    assert run["failed_count"] == counts.get("failed", 0)
    assert run["skipped_count"] == counts.get("skipped", 0)
    if run["status"] in ENDED:
        assert counts.get("pending", 0) == 0
        assert sum(counts.values()) == run["total_recipients"]
    return counts
