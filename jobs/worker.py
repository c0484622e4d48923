"""The worker process (`python -m jobs.worker`): delivers, and runs the periodic
housekeeping, until SIGTERM.

The first SIGTERM (or SIGINT) lets the windows in flight finish and commit, then hands the
jobs back to the queue and exits; a second one rolls the windows in flight back at once.
Besides running deliver_batch jobs, every worker requeues the jobs of workers that died
(procrastinate records heartbeats, but a job whose worker was SIGKILLed stays `doing`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import UTC, datetime

from procrastinate import App, exceptions
from procrastinate.worker import Worker
from prometheus_client import start_http_server

import jobs.metrics  # noqa: F401 - registered before the metrics endpoint serves
from app.logs import configure_logging
from app.settings import Settings, get_settings
from app.tracing import configure_tracing, flush_spans
from db.jobs import JobRepository
from db.pool import DATABASE_UNAVAILABLE, create_pool
from jobs.app import DELIVERY_QUEUE, MAINTENANCE_QUEUE, app
from jobs.providers import build_providers, close_providers
from jobs.resources import DeliveryConfig, WorkerResources

logger = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 2.0


async def requeue_stalled_jobs(procrastinate_app: App, stalled_seconds: float) -> int:
    """Put back in the queue the jobs of workers without a heartbeat for `stalled_seconds`."""
    manager = procrastinate_app.job_manager
    requeued = 0
    for job in await manager.get_stalled_jobs(seconds_since_heartbeat=stalled_seconds):
        try:
            await manager.retry_job(job)
        except exceptions.ConnectorException:
            continue  # another worker requeued it first, or it just finished
        requeued += 1
        logger.warning(
            "requeued the job of a dead worker",
            extra={"job_id": job.id, "task": job.task_name, "args": job.task_kwargs},
        )
    return requeued


async def requeue_orphaned_jobs(
    procrastinate_app: App, worker: Worker, resources: WorkerResources, stalled_seconds: float
) -> int:
    """Put back in the queue the deliver_batch jobs this live worker holds `doing` but does
    not run: when the database is away at the moment procrastinate records a job's end,
    the job stays `doing` and, its worker's heartbeat being fresh, nobody else requeues it."""
    if worker.worker_id is None:
        return 0
    async with resources.pool.acquire() as conn:
        orphans = await JobRepository(conn).orphaned(
            worker.worker_id, "deliver_batch", set(resources.running), stalled_seconds
        )
    for job_id in orphans:
        await procrastinate_app.job_manager.retry_job_by_id_async(job_id, datetime.now(UTC))
        logger.warning("requeued a job this worker lost track of", extra={"job_id": job_id})
    return len(orphans)


async def _requeue_forever(
    procrastinate_app: App, worker: Worker, resources: WorkerResources, stalled_seconds: float
) -> None:
    while True:
        await asyncio.sleep(stalled_seconds / 3)
        try:
            await requeue_stalled_jobs(procrastinate_app, stalled_seconds)
            await requeue_orphaned_jobs(procrastinate_app, worker, resources, stalled_seconds)
        except (exceptions.ConnectorException, *DATABASE_UNAVAILABLE) as exc:
            logger.warning("could not look for stalled jobs (next round): %r", exc)


def _on_signal(worker: Worker, resources: WorkerResources) -> None:
    if not resources.stopping.is_set():
        logger.info("stopping: finishing the sends in flight (signal again to abort them)")
        resources.stopping.set()
        worker.stop()
    else:
        logger.warning("aborting: rolling back the windows in flight")
        resources.aborting.set()


async def run_worker(settings: Settings, *, wait: bool = True, handle_signals: bool = True) -> bool:
    """Run deliver_batch jobs until stopped (or, with wait=False, until the queue is empty).
    Returns whether a signal asked it to stop: procrastinate also stops a worker, quietly,
    when its heartbeat or its listener fails (the database went away)."""
    providers = build_providers(settings)
    pool = await create_pool(settings.database_url, max_size=settings.db_pool_max_size)
    resources = WorkerResources(
        pool=pool,
        providers=providers,
        sends=asyncio.Semaphore(settings.worker_concurrency),
        config=DeliveryConfig(
            max_attempts=settings.delivery_max_attempts,
            window=settings.worker_concurrency,
            retry_base_seconds=settings.delivery_retry_base_seconds,
        ),
        stopping=asyncio.Event(),
        aborting=asyncio.Event(),
    )
    await app.open_async(pool)
    loop = asyncio.get_running_loop()
    recovery: asyncio.Task[None] | None = None
    try:
        app.perform_import_paths()
        worker = Worker(
            app=app,
            queues=[DELIVERY_QUEUE, MAINTENANCE_QUEUE],
            concurrency=settings.worker_jobs,
            additional_context={"resources": resources},
            wait=wait,
            install_signal_handlers=False,
            update_heartbeat_interval=max(1.0, settings.stalled_job_seconds / 3),
            stalled_worker_timeout=settings.stalled_job_seconds,
        )
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, _on_signal, worker, resources)
        recovery = asyncio.create_task(
            _requeue_forever(app, worker, resources, settings.stalled_job_seconds)
        )
        await worker.run()
        return resources.stopping.is_set()
    finally:
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if recovery is not None:
            recovery.cancel()
        await app.close_async()
        await close_providers(providers)
        await pool.close()


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    configure_tracing(settings)
    if settings.worker_metrics_port:
        # A daemon thread serving the process's default registry (jobs/metrics.py).
        start_http_server(settings.worker_metrics_port)
        logger.info("metrics on :%d/metrics", settings.worker_metrics_port)
    try:
        asyncio.run(run_until_signalled(settings))
    finally:
        flush_spans()


async def run_until_signalled(settings: Settings) -> None:
    """The worker process: starts the worker again whenever it stops for any other reason
    than a signal, so that a database outage costs a pause, not the process."""
    while True:
        try:
            if await run_worker(settings):
                return
            logger.warning("the worker stopped without being asked to; starting it again")
        except (exceptions.ConnectorException, *DATABASE_UNAVAILABLE) as exc:
            logger.warning("the database is unavailable; starting the worker again: %r", exc)
        await asyncio.sleep(RESTART_DELAY_SECONDS)


if __name__ == "__main__":
    main()
