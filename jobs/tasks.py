"""procrastinate tasks. They take ids, never objects: the database is the truth."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import asyncpg
from opentelemetry.util.types import AttributeValue
from procrastinate import BaseRetryStrategy, JobContext, RetryDecision
from procrastinate.jobs import Job

from app.core import tracing
from app.core.logs import bind_log_context
from app.core.settings import get_settings
from db.events import run_stream
from db.idempotency import IdempotencyKeyRepository
from db.jobs import JobRepository
from db.pool import database_away
from db.procrastinate import AsyncpgConnector
from db.queue import (
    DELIVER_BATCH,
    DELIVERY_QUEUE,
    EVENTS_QUEUE,
    HOUSEKEEPING_PRIORITY,
    MAINTENANCE_QUEUE,
    SEND_EVENTS,
    SEND_RUN_EVENTS,
    first_job_priority,
)
from db.receipts import ReceiptRepository
from jobs.app import app
from jobs.delivery import DeliveryInterrupted, deliver_chunk, fail_range
from jobs.events import EventRetry, send_pending_events
from jobs.resources import WorkerResources
from jobs.retention import maintain_audit, maintain_deliveries

logger = logging.getLogger(__name__)

MAX_RETRY_WAIT_SECONDS = 30


class DeliveryRetry(BaseRetryStrategy):
    """deliver_batch is retried whatever it raised: a job that gave up would strand its
    deliveries, and it only ever works on pending ones, so running it again is safe. A job
    handed back by a stopping worker goes again at once; one that failed (the database
    away, mostly) after 1 s, then 2 s more each time, at most 30 s apart. A job that keeps
    failing for other reasons is ended by the task itself (see deliver_batch)."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision:
        if isinstance(exception, DeliveryInterrupted):
            return RetryDecision(retry_in={"seconds": 0})
        wait = min(MAX_RETRY_WAIT_SECONDS, 1 + 2 * job.attempts)
        return RetryDecision(retry_in={"seconds": wait})


@app.task(name=DELIVER_BATCH, queue=DELIVERY_QUEUE, pass_context=True, retry=DeliveryRetry())
async def deliver_batch(
    context: JobContext, run_id: str, first: int, last: int, traceparent: str | None = None
) -> None:
    """Deliver the pending deliveries of run `run_id` at positions first..last.
    `traceparent` (tracing on): the trace context of the span that deferred the job.

    Each send is counted as an attempt when its window claims the delivery, before the
    send (jobs/delivery.py): no delivery is sent more than DELIVERY_MAX_ATTEMPTS times,
    whatever fails after. A try that fails for a reason other than the database being
    away (a bug, outcomes the database refuses to store) is counted per job
    (db/jobs.py); once there have been DELIVERY_MAX_ATTEMPTS of those, the job fails its
    pending deliveries with the reason instead of trying again, and the run completes."""
    resources: WorkerResources = context.additional_context["resources"]
    job_id = context.job.id
    assert job_id is not None

    async def schedule_retry(conn: asyncpg.Connection, at: datetime) -> None:
        await defer_follow_up(
            conn, at, context.job.priority, job_id, run_id=run_id, first=first, last=last
        )

    async def newcomer_waiting() -> bool:
        first_job = first_job_priority(context.job.priority)
        async with resources.pool.acquire() as conn:
            return await JobRepository(conn).newcomer_waiting(first_job, run_id)

    with (
        bind_log_context(run_id=run_id, job_id=job_id),
        tracing.job_span("deliver_batch", traceparent, _job_attributes(context, run_id)),
    ):
        if context.job.attempts:  # tried before: maybe too often already
            failures, last_error = await _failures(resources, job_id)
            if failures >= _limit(resources):
                await _give_up(resources, run_id, first, last, last_error)
                return
        try:
            report = await deliver_chunk(
                resources, UUID(run_id), first, last, schedule_retry, newcomer_waiting
            )
        except DeliveryInterrupted:
            raise
        except Exception as exc:
            if database_away(exc):
                raise
            async with resources.pool.acquire() as conn:
                failures = await JobRepository(conn).count_failure(job_id, repr(exc))
            if failures < _limit(resources):
                raise
            logger.exception("the chunk failed %d times", failures)
            await _give_up(resources, run_id, first, last, repr(exc))
            return
        logger.info(
            "chunk delivered",
            extra={
                "positions": [first, last],
                "sent": report.sent,
                "failed": report.failed,
                "skipped": report.skipped,
                "retrying": report.retrying,
                "comes_back_in_seconds": report.comes_back_in,
                "waiting": report.waiting,
            },
        )


def _limit(resources: WorkerResources) -> int:
    return resources.config.max_attempts


async def _failures(resources: WorkerResources, job_id: int) -> tuple[int, str | None]:
    async with resources.pool.acquire() as conn:
        return await JobRepository(conn).failures(job_id)


async def _give_up(
    resources: WorkerResources, run_id: str, first: int, last: int, last_error: str | None
) -> None:
    why = f"its delivery job failed {_limit(resources)} times; last: {last_error}"
    try:
        failed = await fail_range(resources, UUID(run_id), first, last, why)
    except Exception as exc:
        if database_away(exc):
            raise
        # Not even `failed` can be stored: nothing more to try. The job ends (no loop);
        # its deliveries stay pending, and ops_stalled_runs shows the run.
        logger.exception("chunk given up, and its deliveries could not be failed")
        return
    logger.error("chunk given up: its pending deliveries failed", extra={"failed": failed})


async def defer_follow_up(
    conn: asyncpg.Connection, at: datetime, priority: int, asking: int | None, **job: Any
) -> None:
    """Make sure a deliver_batch job takes the same range no later than `at`, in `conn`'s
    transaction (the window's: it exists exactly when the deliveries that need it do:
    transient failures, deliveries waiting for quiet hours to end, a chunk that made way
    for a newcomer or waits for its rate limit). One is enough however many windows ask:
    a job of the range waiting in the queue is brought forward to `at` if that is earlier
    (a wake-up is not delayed by a 300 s backoff, nor a backoff by a wake-up at 8:00
    tomorrow); else one is deferred, at the same `priority`. No procrastinate queueing
    lock: a job handed back to the queue while its follow-up waits would collide with it.
    `asking`: the job that asks, never its own follow-up (db/jobs.py `bring_forward`)."""
    jobs = JobRepository(conn)
    await jobs.lock_range(job["run_id"], job["first"])
    if not await jobs.bring_forward(job["run_id"], job["first"], at, besides=asking):
        await deliver_batch.configure(
            connection=conn, schedule_at=at, priority=priority
        ).defer_async(**job, **tracing.job_trace_args())


# Deferred with the events of a stream, in the transaction of their change (db/events.py),
# with the stream's lock: one job of a stream at a time, in order. Retried with backoff
# while the receiver fails, for EVENTS_RETRY_HOURS; then the job fails and
# ops_undelivered_events shows its events.
@app.task(
    name=SEND_EVENTS,
    queue=EVENTS_QUEUE,
    pass_context=True,
    retry=EventRetry(),
    priority=HOUSEKEEPING_PRIORITY,
)
async def send_events(context: JobContext, stream: str) -> None:
    """POST the pending events of `stream` to EVENTS_WEBHOOK_URL, oldest first."""
    await _send_events(context, stream)


# The same for the jobs that the release before 0016 queued, by run (with the lock that a
# run's stream keeps): to be removed once no such job can be left.
@app.task(
    name=SEND_RUN_EVENTS,
    queue=EVENTS_QUEUE,
    pass_context=True,
    retry=EventRetry(),
    priority=HOUSEKEEPING_PRIORITY,
)
async def send_run_events(context: JobContext, run_id: str) -> None:
    await _send_events(context, run_stream(run_id))


async def _send_events(context: JobContext, stream: str) -> None:
    pool = cast(AsyncpgConnector, app.connector).pool
    settings = context.additional_context["settings"]
    with bind_log_context(stream=stream, job_id=context.job.id):
        sent = await send_pending_events(pool, settings, stream)
        if sent:
            logger.info("events delivered", extra={"events": sent})


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
@app.task(name="purge_idempotency_keys", queue=MAINTENANCE_QUEUE, priority=HOUSEKEEPING_PRIORITY)
async def purge_idempotency_keys(timestamp: int) -> int:
    """Delete the expired Idempotency-Keys of publish; returns how many."""
    pool = cast(AsyncpgConnector, app.connector).pool
    async with pool.acquire() as conn:
        return await IdempotencyKeyRepository(conn).purge_expired()


# Twilio's sends whose receipt never came (its callbacks could not reach us) would pile up:
# they go AWAITED_RECEIPT_DAYS after the send (db/receipts.py).
@app.periodic(cron="37 * * * *")
@app.task(name="purge_awaited_receipts", queue=MAINTENANCE_QUEUE, priority=HOUSEKEEPING_PRIORITY)
async def purge_awaited_receipts(timestamp: int) -> int:
    """Forget the sends that waited AWAITED_RECEIPT_DAYS for a receipt; returns how many."""
    pool = cast(AsyncpgConnector, app.connector).pool
    async with pool.acquire() as conn:
        return await ReceiptRepository(conn).purge()


# Finished jobs and their events would pile up for ever (one per 500 recipients, and a
# purge every 10 minutes); the last JOB_RETENTION_HOURS stay for the ops views and for
# post-mortems. Failed and aborted jobs are kept: someone should look at them first.
@app.periodic(cron="17 * * * *")
@app.task(name="purge_finished_jobs", queue=MAINTENANCE_QUEUE, priority=HOUSEKEEPING_PRIORITY)
async def purge_finished_jobs(timestamp: int) -> None:
    """Delete succeeded jobs finished more than JOB_RETENTION_HOURS ago."""
    await app.job_manager.delete_old_jobs(nb_hours=get_settings().job_retention_hours)


# Hourly: partitions for this month and MONTHS_AHEAD more (so a missed tick, or many,
# costs nothing), then DELIVERY_RETENTION_DAYS, then DELIVERY_DATA_DAYS. A failure fails
# the job (procrastinate logs its traceback; `ops_queue_depth` shows it `failed`), and the
# next tick tries again.
@app.periodic(cron="7 * * * *")
@app.task(name="maintain_deliveries", queue=MAINTENANCE_QUEUE, priority=HOUSEKEEPING_PRIORITY)
async def maintain_deliveries_task(timestamp: int) -> None:
    """Partitions of `deliveries` ahead of time; retention of old runs' deliveries; the
    erasure of their recipients' data; the audit trail's partitions and retention."""
    pool = cast(AsyncpgConnector, app.connector).pool
    settings = get_settings()
    try:
        await maintain_deliveries(
            pool, settings.delivery_retention, data_retention=settings.delivery_data_retention
        )
    finally:  # the audit's partitions, whatever became of the deliveries'
        await maintain_audit(pool, settings.audit_retention)
