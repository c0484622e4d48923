"""The worker's recovery loop, in a real in-process worker: a round that fails does not
end it; the next round requeues the jobs of a dead worker, never the worker's own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from datetime import UTC, datetime

import jobs.worker
from app.domain.schemas import Recipient
from app.http.auth import AccessToken
from app.services.publishing import publish_campaign
from db.pool import close_pool, create_pool
from jobs.app import app
from jobs.worker import requeue_stalled_jobs, run_worker
from tests.helpers import create_campaign
from tests.jobs.delivery_helpers import deliveries, run_status
from tests.waiting import PATIENCE, within


async def test_a_failed_recovery_round_is_logged_and_the_next_one_requeues(
    client, db, settings, monkeypatch, caplog
):
    campaign = await create_campaign(client)
    caller = AccessToken(exp=datetime(2099, 1, 1, tzinfo=UTC), sub="t", brands=["*"])
    async with db.transaction():
        run = await publish_campaign(
            db, campaign["id"], [Recipient("1", "a@example.com")], caller,
            max_recipients=10, batch_size=10,
        )  # fmt: skip
        # A worker that died holding the job: `doing`, its heartbeat long gone.
        dead = await db.fetchval(
            "INSERT INTO procrastinate_workers (last_heartbeat)"
            " VALUES (now() - interval '1 hour') RETURNING id"
        )
        await db.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = $1", dead)
    rounds = []
    real_round = jobs.worker.recover_jobs

    async def first_round_fails(*args: object) -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise KeyError("Attempt to overwrite 'args' in LogRecord")
        await real_round(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(jobs.worker, "recover_jobs", first_round_fails)
    worker = asyncio.create_task(run_worker(replace(settings, stalled_job_seconds=1)))
    try:
        async with asyncio.timeout(PATIENCE):
            while await run_status(db, str(run.id)) != "completed":  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert not worker.done()  # it never stopped on its own
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await within(PATIENCE, worker, "the worker's end once cancelled")

    assert len(rounds) >= 2
    [failed] = [r for r in caplog.records if "recovery: round failed unexpectedly" in r.message]
    assert failed.levelno == logging.ERROR and failed.exc_info[0] is KeyError
    assert (await deliveries(db, str(run.id)))[0]["status"] == "sent"


async def test_a_worker_never_requeues_the_jobs_it_runs_however_old_its_heartbeat(
    client, db, database_url
):
    """Renders that held a worker's event loop past STALLED_JOB_SECONDS: its recovery round
    may come before its heartbeat. It had requeued its own running jobs, whose ends then
    took them out of the queue: the runs stalled with deliveries pending (CI, load 9)."""
    campaign = await create_campaign(client)
    caller = AccessToken(exp=datetime(2099, 1, 1, tzinfo=UTC), sub="t", brands=["*"])
    async with db.transaction():
        await publish_campaign(
            db, campaign["id"], [Recipient("1", "a@example.com")], caller,
            max_recipients=10, batch_size=10,
        )  # fmt: skip
        late = await db.fetchval(
            "INSERT INTO procrastinate_workers (last_heartbeat)"
            " VALUES (now() - interval '1 hour') RETURNING id"
        )
        await db.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = $1", late)
    pool = await create_pool(database_url)
    await app.open_async(pool)
    try:
        assert await requeue_stalled_jobs(app, pool, 1, alive=late) == 0
        assert await db.fetchval("SELECT status FROM procrastinate_jobs") == "doing"
        assert await requeue_stalled_jobs(app, pool, 1, alive=None) == 1  # another's round
        assert await db.fetchval("SELECT status FROM procrastinate_jobs") == "todo"
    finally:
        await app.close_async()
        await close_pool(pool)
