"""procrastinate tasks. They take ids, never objects: the database is the truth."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import cast
from uuid import UUID

from opentelemetry.util.types import AttributeValue
from procrastinate import JobContext, RetryStrategy

from app import tracing
from app.logs import bind_log_context
from app.settings import get_settings
from db.idempotency import IdempotencyKeyRepository
from jobs.app import DELIVERY_QUEUE, MAINTENANCE_QUEUE, app
from jobs.asyncpg_connector import AsyncpgConnector
from jobs.delivery import deliver_chunk
from jobs.resources import WorkerResources

logger = logging.getLogger(__name__)


# Retried whatever it raised, for ever: it only ever works on pending deliveries, so
# running it again is safe, and a job that gave up would strand its deliveries. It raises
# DeliveryInterrupted when its worker stops, and database errors when the database is away.
@app.task(
    name="deliver_batch",
    queue=DELIVERY_QUEUE,
    pass_context=True,
    retry=RetryStrategy(wait=1, linear_wait=2),
)
async def deliver_batch(
    context: JobContext, run_id: str, first: int, last: int, traceparent: str | None = None
) -> None:
    """Deliver the pending deliveries of run `run_id` at positions first..last.
    `traceparent` (tracing on): the trace context of the span that deferred the job."""
    resources: WorkerResources = context.additional_context["resources"]
    job_id = context.job.id
    assert job_id is not None
    resources.running.add(job_id)  # see jobs.worker.requeue_orphaned_jobs
    try:
        with (
            bind_log_context(run_id=run_id, job_id=job_id),
            tracing.job_span("deliver_batch", traceparent, _job_attributes(context, run_id)),
        ):
            report = await deliver_chunk(resources, UUID(run_id), first, last)
            if report.retry_in is not None:
                # Transient failures are tried again by a follow-up job, so that the rest
                # of the chunk (and the worker) never waits out a backoff.
                retry_at = datetime.now(UTC) + timedelta(seconds=report.retry_in)
                await deliver_batch.configure(schedule_at=retry_at).defer_async(
                    run_id=run_id, first=first, last=last, **tracing.job_trace_args()
                )
            logger.info(
                "chunk delivered",
                extra={
                    "positions": [first, last],
                    "sent": report.sent,
                    "failed": report.failed,
                    "skipped": report.skipped,
                    "retry_in_seconds": report.retry_in,
                },
            )
    finally:
        resources.running.discard(job_id)


def _job_attributes(context: JobContext, run_id: str) -> dict[str, AttributeValue]:
    return {
        "messaging.system": "procrastinate",
        "messaging.operation.type": "process",
        "messaging.destination.name": DELIVERY_QUEUE,
        "messaging.message.id": str(context.job.id),
        "run_id": run_id,
    }


# Keys hold 24 h; purging every 10 minutes keeps at most that much extra in the table.
# procrastinate defers each tick once however many workers run.
@app.periodic(cron="*/10 * * * *")
@app.task(name="purge_idempotency_keys", queue=MAINTENANCE_QUEUE)
async def purge_idempotency_keys(timestamp: int) -> int:
    """Delete the expired Idempotency-Keys of publish; returns how many."""
    pool = cast(AsyncpgConnector, app.connector).pool
    async with pool.acquire() as conn:
        return await IdempotencyKeyRepository(conn).purge_expired()


# Finished jobs and their events would pile up for ever (one per 500 recipients, and a
# purge every 10 minutes); the last JOB_RETENTION_HOURS stay for the ops views and for
# post-mortems. Failed and aborted jobs are kept: someone should look at them first.
@app.periodic(cron="17 * * * *")
@app.task(name="purge_finished_jobs", queue=MAINTENANCE_QUEUE)
async def purge_finished_jobs(timestamp: int) -> None:
    """Delete succeeded jobs finished more than JOB_RETENTION_HOURS ago."""
    await app.job_manager.delete_old_jobs(nb_hours=get_settings().job_retention_hours)
