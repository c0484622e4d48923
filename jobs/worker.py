"""The worker process (`python -m jobs.worker`): delivers, and runs the periodic
housekeeping, until SIGTERM.

The first SIGTERM (or SIGINT) lets the windows in flight finish and commit, then hands the
jobs back to the queue and exits 0; a second one rolls the windows in flight back at once.
Besides running jobs, every worker keeps two supervised loops (app/core/supervision.py):
- recovery: requeues the jobs of workers that died (procrastinate records heartbeats, but
  a job whose worker was SIGKILLed stays `doing`), and the jobs this worker lost track of;
- heartbeat: procrastinate stops its own heartbeat as soon as a graceful stop begins, so a
  window still sending then (a hung provider) would look dead to the other workers after
  STALLED_JOB_SECONDS and its job would run twice. This heartbeat lasts until the worker
  has finished every job.
A loop round that fails is logged and the next one runs; a loop that ends for good stops
the process with status 1, so that the platform restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
import uvloop
from procrastinate import App, exceptions
from procrastinate.worker import Worker
from prometheus_client import start_http_server

import jobs.metrics  # noqa: F401 - registered before the metrics endpoint serves
from app.core import supervision
from app.core.logs import configure_logging
from app.core.settings import Settings, SettingsError, get_settings
from app.core.tracing import configure_tracing, flush_spans
from app.core.unsubscribe import UnsubscribeKeys
from db.jobs import JobRepository
from db.pool import DATABASE_UNAVAILABLE, close_pool, create_pool
from db.queue import WORKER_QUEUES
from jobs.app import app
from jobs.limits import Limiter
from jobs.providers import Provider, build_providers, close_providers
from jobs.resources import DeliveryConfig, Leases, WorkerResources

logger = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 2.0
SPARE_CONNECTIONS = 3
"""Pool connections beyond one per running job: heartbeat, recovery, listener."""
# A job inserted now is announced by NOTIFY; a requeued one, or one scheduled for later (a
# retry's backoff), is found by polling. procrastinate polls every 5 s by default; one
# cheap query a second makes either start within a second.
FETCH_POLLING_SECONDS = 1.0
DATABASE_ERRORS = (exceptions.ConnectorException, *DATABASE_UNAVAILABLE)


@dataclass
class StopRequest:
    """What the process was asked, for its whole life (the worker may restart many times):
    the first signal stops, the second aborts; `failed` when a supervised loop died."""

    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    aborting: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False
    worker: Worker | None = None
    """The worker running now, if any."""

    def on_signal(self) -> None:
        if not self.stopping.is_set():
            logger.info("stopping: finishing the sends in flight (signal again to abort them)")
            self.stop()
        else:
            logger.warning("aborting: rolling back the windows in flight")
            self.aborting.set()

    def fail(self) -> None:
        self.failed = True
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        if self.worker is not None:
            self.worker.stop()


async def requeue_stalled_jobs(
    procrastinate_app: App, pool: asyncpg.Pool, stalled_seconds: float, alive: int | None
) -> int:
    """Put back in the queue the jobs of workers without a heartbeat for `stalled_seconds`
    (each only if still held by that worker: another worker's recovery may be first).
    Never those of worker `alive`, this one: after renders held its event loop past
    `stalled_seconds`, this round may run before its heartbeat, and it requeued the jobs
    it was running (their ends then took them out of the queue, and the runs stalled)."""
    requeued = 0
    stalled = await procrastinate_app.job_manager.get_stalled_jobs(
        seconds_since_heartbeat=stalled_seconds
    )
    for job in stalled:
        assert job.id is not None
        if job.worker_id is not None and job.worker_id == alive:
            continue
        async with pool.acquire() as conn:
            if not await JobRepository(conn).requeue_if_held_by(job.id, job.worker_id):
                continue
        requeued += 1
        logger.warning(
            "requeued the job of a dead worker",
            extra={"job_id": job.id, "task": job.task_name, "task_kwargs": job.task_kwargs},
        )
    return requeued


def running_job_ids(worker: Worker) -> set[int]:
    """The jobs this worker runs, until procrastinate has recorded their end (a job leaves
    this set only then). procrastinate 3.10 (pinned) keeps them in `_running_jobs`."""
    return {context.job.id for context in worker._running_jobs.values() if context.job.id}


async def requeue_orphaned_jobs(
    worker: Worker, resources: WorkerResources, stalled_seconds: float
) -> int:
    """Put back in the queue the jobs this live worker holds `doing` but does not run: when
    the database is away at the moment procrastinate records a job's end, the job stays
    `doing` and, its worker's heartbeat being fresh, nobody else requeues it."""
    if worker.worker_id is None:
        return 0
    requeued = 0
    async with resources.pool.acquire() as conn:
        jobs = JobRepository(conn)
        for job_id in await jobs.orphaned(
            worker.worker_id, running_job_ids(worker), stalled_seconds
        ):
            if await jobs.requeue_if_held_by(job_id, worker.worker_id):
                requeued += 1
                logger.warning("requeued a job this worker lost track of", extra={"job_id": job_id})
    return requeued


async def recover_jobs(
    procrastinate_app: App, worker: Worker, resources: WorkerResources, stalled_seconds: float
) -> None:
    """One round of the recovery loop."""
    await requeue_stalled_jobs(procrastinate_app, resources.pool, stalled_seconds, worker.worker_id)
    await requeue_orphaned_jobs(worker, resources, stalled_seconds)


async def update_heartbeat(
    procrastinate_app: App, worker: Worker, resources: WorkerResources | None = None
) -> None:
    """The worker's heartbeat, and the claims of its windows in flight: both say it lives."""
    if worker.worker_id is not None:  # None before it registered and once it unregistered
        await procrastinate_app.job_manager.update_heartbeat(worker.worker_id)
    if resources is not None:
        await resources.leases.renew(resources.pool)


async def run_worker(
    settings: Settings,
    *,
    wait: bool = True,
    stop: StopRequest | None = None,
    providers: Mapping[str, Provider] | None = None,
    clock_offset: timedelta = timedelta(0),
) -> None:
    """Run jobs until `stop` is asked (or, with wait=False, until the queue is empty).
    procrastinate also stops a worker, quietly, when its heartbeat or its listener fails
    (the database went away): this then returns without `stop.stopping` set.
    `providers` replaces those of the settings (the caller then closes them).
    `clock_offset` (tests only): WorkerResources.clock_offset."""
    stop = stop or StopRequest()
    if settings.db_pool_max_size < settings.worker_jobs + SPARE_CONNECTIONS:
        # Each running job takes a connection for its claims and records; the heartbeats,
        # the recovery loop and the listener need theirs even when every job does.
        raise SettingsError(
            f"DB_POOL_MAX_SIZE ({settings.db_pool_max_size}) must be at least WORKER_JOBS"
            f" ({settings.worker_jobs}) + {SPARE_CONNECTIONS}"
        )
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(
            settings.database_url,
            max_size=settings.db_pool_max_size,
            # A window's claim and record touch `deliveries`, a partitioned table: with a
            # custom plan per execution, PostgreSQL spent 1.4 ms planning each claim (the
            # worker and the database share the cores), and the `log` provider ran at 0.54x
            # of the release before; the generic plan prunes partitions at run time
            # (docs/performance.md, issue 21).
            server_settings={"plan_cache_mode": "force_generic_plan"},
        )
        stack.push_async_callback(close_pool, pool)
        if providers is None:
            providers = build_providers(settings)
            stack.push_async_callback(close_providers, providers)
        resources = WorkerResources(
            pool=pool,
            providers=providers,
            sends=asyncio.Semaphore(settings.worker_concurrency),
            config=DeliveryConfig(
                max_attempts=settings.delivery_max_attempts,
                window=settings.worker_concurrency,
                retry_base_seconds=settings.delivery_retry_base_seconds,
                max_throttles=settings.delivery_max_throttles,
                lease_seconds=settings.stalled_job_seconds,
                unsubscribe=UnsubscribeKeys.of(settings),
            ),
            leases=Leases(settings.stalled_job_seconds),
            stopping=stop.stopping,
            aborting=stop.aborting,
            limiter=Limiter(
                pool,
                {"email": settings.email_rate_limit, "sms": settings.sms_rate_limit},
                settings.rate_limit_burst_seconds,
                max_waiting=max(1, settings.worker_jobs - 1),
            ),
            clock_offset=clock_offset,
        )
        await app.open_async(pool)
        stack.push_async_callback(app.close_async)
        app.perform_import_paths()
        worker = Worker(
            app=app,
            queues=WORKER_QUEUES,
            concurrency=settings.worker_jobs,
            additional_context={"resources": resources, "settings": settings},
            wait=wait,
            fetch_job_polling_interval=FETCH_POLLING_SECONDS,
            install_signal_handlers=False,
            update_heartbeat_interval=max(1.0, settings.stalled_job_seconds / 3),
            stalled_worker_timeout=settings.stalled_job_seconds,
        )
        stop.worker = worker
        stack.callback(setattr, stop, "worker", None)
        stalled = settings.stalled_job_seconds
        loops = {
            "recovery": supervision.every(
                stalled / 3,
                lambda: recover_jobs(app, worker, resources, stalled),
                name="recovery",
                expected=DATABASE_ERRORS,
            ),
            "heartbeat": supervision.every(
                max(1.0, stalled / 3),
                lambda: update_heartbeat(app, worker, resources),
                name="heartbeat",
                expected=DATABASE_ERRORS,
            ),
        }
        for name, loop in loops.items():
            task = supervision.start(loop, name=name, on_death=stop.fail)
            stack.push_async_callback(_cancel, task)
        if not stop.stopping.is_set():  # a signal may have come while it started
            await worker.run()


async def _cancel(task: asyncio.Task[object]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_until_signalled(settings: Settings, *, clock_offset: timedelta = timedelta(0)) -> int:
    """The worker process: starts the worker again whenever it stops for any other reason
    than a signal, so that a database outage costs a pause, not the process. Returns the
    exit status: 0 when a signal stopped it, 1 when a supervised loop died.
    `clock_offset` (tests only): WorkerResources.clock_offset."""
    stop = StopRequest()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.on_signal)
    try:
        while not stop.stopping.is_set():
            try:
                await run_worker(settings, stop=stop, clock_offset=clock_offset)
                if not stop.stopping.is_set():
                    logger.warning("the worker stopped without being asked to; starting again")
            except DATABASE_ERRORS as exc:
                logger.warning("the database is unavailable; starting the worker again: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.stopping.wait(), RESTART_DELAY_SECONDS)
    finally:
        # Nothing is left to stop: a signal during the exit itself must not kill the
        # process (the loop would put the default handlers back as it closes).
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
    return 1 if stop.failed else 0


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    configure_tracing(settings)
    try:
        if settings.worker_metrics_port:
            # A daemon thread serving the process's default registry (jobs/metrics.py).
            start_http_server(settings.worker_metrics_port)
            logger.info("metrics on :%d/metrics", settings.worker_metrics_port)
        status = uvloop.run(run_until_signalled(settings))
    except Exception:
        logger.critical("the worker process failed", exc_info=True)
        status = 1
    finally:
        flush_spans()
    sys.exit(status)


if __name__ == "__main__":
    main()
