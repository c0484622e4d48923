"""publish_campaign: the run, its deliveries and their jobs, in one transaction."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue
from procrastinate.types import JSONValue
from prometheus_client import Histogram

from app.core import tracing
from app.core.settings import Settings
from app.domain.access import Caller
from app.domain.errors import BadState, DataErased, InvalidInput
from app.domain.recipient_data import missing_data, stored_data
from app.domain.recipients import normalise_all, skip_reasons
from app.domain.schedule import check_recipient_zones, check_send_at
from app.domain.schemas import Recipient, Run
from app.domain.templates import CampaignTemplates, TemplateError
from app.services.campaigns import campaign_to_publish
from app.services.idempotency import IdempotencyKey, claim_key, parse_key, retry_key
from app.services.runs import ensure_deliveries_kept, visible_run
from db import queue
from db.audit import AuditEvent, changes_between
from db.deliveries import DataRow, DeliveryRepository, DeliveryRow
from db.ids import uuid7
from db.pool import DATABASE_AWAY
from db.retention import RetentionRepository
from db.runs import ENDED, RunRepository, initial_status
from db.suppressions import SuppressionRepository

logger = logging.getLogger(__name__)

PUBLISH_RECIPIENTS = Histogram(
    "messaging_publish_recipients",
    "Recipients of each accepted publish (new runs only, not idempotent replays).",
    buckets=(1, 10, 100, 1_000, 10_000, 50_000, 100_000),
)

LOOKUP_TIMEOUT_SECONDS = 5.0
"""How long the look-up of a run whose commit lost its answer waits for a connection."""

_DEFER: dict[str, AttributeValue] = {
    "messaging.system": "procrastinate",
    "messaging.operation.type": "send",
    "messaging.destination.name": queue.DELIVERY_QUEUE,
}


async def publish_campaign(
    conn: asyncpg.Connection,
    campaign_id: str,
    recipients: list[Recipient],
    caller: Caller,
    *,
    max_recipients: int,
    batch_size: int,
    idempotency_key: IdempotencyKey | None = None,
    retry_of: UUID | None = None,
    send_at: datetime | None = None,
    pool: asyncpg.Pool | None = None,
    max_data_bytes: int = Settings.publish_max_data_bytes,
) -> Run:
    """The new run; or, for a repeat of `idempotency_key` with the same body, the
    original run (nothing is created). `retry_of`: the run this one retries. With
    `send_at`, the run is `scheduled` and its jobs wait in the queue until that instant.
    A recipient's `data` is at most `max_data_bytes` of JSON (app/domain/recipient_data.py);
    one that lacks what the campaign's templates read is skipped, `missing_data`.

    When the connection is lost at the commit, the commit may have happened all the same:
    the run is then looked up on another connection of `pool`, and returned if it exists,
    so that a caller is told 202 exactly when its run exists."""
    if not 1 <= len(recipients) <= max_recipients:
        raise InvalidInput(
            f"recipients must have 1 to {max_recipients} entries",
            {"$.recipients": f"has {len(recipients)} entries; allowed 1 to {max_recipients}"},
        )
    check_recipient_zones(recipients)
    data = stored_data([r.data for r in recipients], max_data_bytes)
    # Chosen here, so that a run whose commit lost its answer can be looked up. A UUIDv7:
    # its deliveries go to the partition of this month (db/ids.py).
    run_id = uuid7()
    try:
        return await _publish(
            conn,
            run_id,
            campaign_id,
            recipients,
            data,
            caller,
            batch_size,
            idempotency_key,
            retry_of,
            send_at,
        )
    except DATABASE_AWAY:
        if pool is None:
            raise
        async with pool.acquire(timeout=LOOKUP_TIMEOUT_SECONDS) as fresh:
            committed = await RunRepository(fresh).get_by_id(run_id)
        if committed is None:
            raise
        logger.warning("publish committed though its connection was lost; answering 202")
        return Run(**committed)


async def _publish(
    conn: asyncpg.Connection,
    run_id: UUID,
    campaign_id: str,
    recipients: list[Recipient],
    data: list[msgspec.Raw | None],
    caller: Caller,
    batch_size: int,
    idempotency_key: IdempotencyKey | None,
    retry_of: UUID | None,
    send_at: datetime | None,
) -> Run:
    async with tracing.transaction(conn, "publish transaction"):
        with tracing.db_span("SELECT", "campaigns"):
            campaign = await campaign_to_publish(conn, campaign_id, caller)
        # Before the status check: a repeat returns its run even if the campaign was
        # archived since.
        if idempotency_key is not None:
            with tracing.db_span("INSERT", "idempotency_keys"):
                original = await claim_key(conn, campaign, idempotency_key, run_id)
            if original is not None:
                return original
        # After the replay: a repeat of a scheduled publish returns its run even once
        # its send_at has passed.
        if send_at is not None:
            check_send_at(send_at, datetime.now(UTC))
        if campaign["status"] != "active":
            raise BadState(
                f"campaign is {campaign['status']}; only an active campaign can be published",
                status=campaign["status"],
                allowed=["active"],
            )
        channel, brand_id = campaign["channel"], campaign["brand_id"]
        keys = normalise_all(channel, recipients)
        suppressed: set[str] = set()
        if campaign["has_suppressions"]:
            with tracing.db_span("SELECT", "suppressions"):
                # Brand-wide, or of the campaign's topic.
                suppressed = await SuppressionRepository(conn).listed_among(
                    brand_id, keys, campaign["topic"]
                )
        skips = skip_reasons(channel, keys, suppressed)
        skips.update(missing_data(_templates(campaign), data, skips))
        with_data = any(text is not None for p, text in enumerate(data) if p not in skips)

        fields = {
            "campaign_id": campaign["id"],
            "total_recipients": len(recipients),
            "skipped_count": len(skips),
            "retry_of": retry_of,
            "scheduled_for": send_at,
        }
        with tracing.db_span("INSERT", "runs"):
            run = await RunRepository(conn).create(
                **fields,
                brand_id=brand_id,
                created_by=caller.sub,
                run_id=run_id,
                audit=_published(run_id, brand_id, fields, caller),
                with_data=with_data,
            )
        deliveries = DeliveryRepository(conn)
        with tracing.db_span("COPY", "deliveries"):
            await deliveries.copy(_delivery_rows(run["id"], recipients, skips))
        if with_data:
            with tracing.db_span("COPY", "delivery_data"):
                await deliveries.copy_data(_data_rows(run["id"], data, skips))
        job_ids = await defer_deliveries(
            conn,
            str(run["id"]),
            len(recipients),
            batch_size,
            campaign["priority"],
            schedule_at=send_at,
        )
    PUBLISH_RECIPIENTS.observe(len(recipients))
    logger.info(
        "run published",
        extra={
            "run_id": str(run["id"]),
            "campaign_id": str(campaign["id"]),
            "brand_id": brand_id,
            "recipients": len(recipients),
            "skipped": len(skips),
            "jobs": len(job_ids),
            "retry_of": str(retry_of) if retry_of else None,
            "send_at": send_at.isoformat() if send_at else None,
        },
    )
    return Run(**run)


async def retry_failed(
    conn: asyncpg.Connection,
    campaign_id: str,
    run_id: str,
    caller: Caller,
    *,
    batch_size: int,
    idempotency_key_header: str | None = None,
    pool: asyncpg.Pool | None = None,
    retention: timedelta | None = None,
    data_retention: timedelta = timedelta(days=Settings.delivery_data_days),
) -> Run:
    """A new run of the failed deliveries of an ended run (same person_id, recipient,
    time_zone and data, in their order), published like any other: skips, suppressions
    added since and the Idempotency-Key apply. The original run is not changed.
    DataErased once the original's data is past `data_retention` (erased, or about to be)."""
    if idempotency_key_header is not None:
        parse_key(idempotency_key_header)  # a malformed request is 400 whatever the run's state
    original = await visible_run(conn, campaign_id, run_id, caller)
    await ensure_deliveries_kept(conn, original, retention)
    if original["status"] not in ENDED:
        raise BadState(
            f"run is {original['status']}; only an ended run can be retried",
            status=original["status"],
            allowed=list(ENDED),
        )
    if original["failed_count"] == 0:
        raise BadState(
            "the run has no failed delivery to retry",
            status=original["status"],
            allowed=list(ENDED),
            failed_count=0,
        )
    if await RetentionRepository(conn).data_erased(original["id"], data_retention):
        raise DataErased(
            f"the recipients' data of run {original['id']} was erased: it ended more than "
            "DELIVERY_DATA_DAYS ago, and a retry cannot carry it",
            {"completed_at": original["completed_at"].isoformat()},
        )
    rows = await DeliveryRepository(conn).failed_recipients(original["id"])
    recipients = [
        Recipient(
            person_id=row[0],
            recipient=row[1],
            time_zone=row[2],
            data=None if row[3] is None else msgspec.Raw(row[3].encode()),
        )
        for row in rows
    ]
    return await publish_campaign(
        conn,
        campaign_id,
        recipients,
        caller,
        # The original was accepted; limits lowered since do not make its retry a 400
        # (and PostgreSQL's text of a jsonb may be a little longer than what was sent).
        max_recipients=len(recipients),
        max_data_bytes=sys.maxsize,
        batch_size=batch_size,
        idempotency_key=retry_key(idempotency_key_header, original["id"]),
        retry_of=original["id"],
        pool=pool,
    )


PUBLISHED_FIELDS = (
    "campaign_id", "status", "total_recipients", "skipped_count", "retry_of", "scheduled_for",
)  # fmt: skip


def _published(run_id: UUID, brand_id: str, fields: dict[str, Any], caller: Caller) -> AuditEvent:
    """The audit row of a new run of these `fields` (a retry's names the run it retries):
    its counts, never its recipients. Written by the run's own INSERT."""
    run = {**fields, "status": initial_status(fields["scheduled_for"])}
    if run["scheduled_for"] is not None:
        run["scheduled_for"] = run["scheduled_for"].astimezone(UTC)  # as the database has it
    changes = changes_between(None, run, PUBLISHED_FIELDS)
    return AuditEvent(brand_id, caller.sub, "run.published", "run", str(run_id), changes)


def _templates(campaign: asyncpg.Record) -> CampaignTemplates | None:
    """The campaign's compiled templates (cached per text), for the data they require.
    None for texts stored before they were templates that are not one: nothing is
    required at publish, and each render fails at send (`render_failed`)."""
    try:
        return CampaignTemplates.compile(
            campaign["subject"], campaign["body"], campaign["html_body"]
        )
    except TemplateError:
        return None


def _delivery_rows(
    run_id: UUID, recipients: list[Recipient], skips: dict[int, str]
) -> Iterator[DeliveryRow]:
    """A generator: COPY consumes it while PostgreSQL already ingests earlier chunks."""
    for position, r in enumerate(recipients):
        if position in skips:
            yield run_id, position, r.person_id, r.recipient, "skipped", skips[position], None
        else:
            yield run_id, position, r.person_id, r.recipient, "pending", None, r.time_zone


def _data_rows(
    run_id: UUID, data: list[msgspec.Raw | None], skips: dict[int, str]
) -> Iterator[DataRow]:
    """The data of the deliveries to send; a skipped one keeps none: it is never sent nor
    retried."""
    for position, raw in enumerate(data):
        if raw is not None and position not in skips:
            yield run_id, position, raw


async def defer_deliveries(
    conn: asyncpg.Connection,
    run_id: str,
    total: int,
    batch_size: int,
    priority: str = "normal",
    *,
    schedule_at: datetime | None = None,
) -> list[int]:
    """One deliver_batch job per `batch_size` positions, deferred on `conn` (so inside
    its transaction: the jobs exist exactly when the run does), the k-th at the
    procrastinate priority of the k-th job of a run of that campaign `priority`
    (db/queue.py), due at `schedule_at` if given (a scheduled run: they wait in the
    queue, no process has to remember them). With tracing on, each job carries this
    span's trace context (`traceparent`): its run continues the trace."""
    batches: list[dict[str, JSONValue]] = [
        {"run_id": run_id, "first": first, "last": min(first + batch_size, total) - 1}
        for first in range(0, total, batch_size)
    ]
    attributes = {**_DEFER, "messaging.batch.message_count": len(batches), "run_id": run_id}
    with tracing.span("defer deliver_batch", kind=SpanKind.PRODUCER, attributes=attributes):
        if trace_args := tracing.job_trace_args():
            for batch in batches:
                batch.update(trace_args)
        jobs = [
            queue.job(
                queue.DELIVER_BATCH,
                queue.DELIVERY_QUEUE,
                queue.delivery_priority(priority, rank),
                batch,
                scheduled_at=schedule_at,
            )
            for rank, batch in enumerate(batches)
        ]
        return await queue.defer(conn, jobs)
