"""publish_campaign: the run, its deliveries and their jobs, in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from uuid import UUID, uuid4

import asyncpg
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue
from procrastinate.types import JSONValue

from app import tracing
from app.auth import AccessToken
from app.campaigns import visible_campaign
from app.errors import BadState, InvalidInput
from app.idempotency import IdempotencyKey, claim_key
from app.metrics import PUBLISH_RECIPIENTS
from app.recipients import normalise_all, skip_reasons
from app.schemas import Recipient, Run
from db.runs import DeliveryRow, RunRepository
from db.suppressions import SuppressionRepository
from jobs.app import DELIVERY_QUEUE
from jobs.tasks import deliver_batch

logger = logging.getLogger(__name__)

_COPY: dict[str, AttributeValue] = {
    **tracing.POSTGRESQL,
    "db.operation.name": "COPY",
    "db.collection.name": "deliveries",
}
_DEFER: dict[str, AttributeValue] = {
    "messaging.system": "procrastinate",
    "messaging.operation.type": "send",
    "messaging.destination.name": DELIVERY_QUEUE,
}


async def publish_campaign(
    conn: asyncpg.Connection,
    campaign_id: str,
    recipients: list[Recipient],
    caller: AccessToken,
    *,
    max_recipients: int,
    batch_size: int,
    idempotency_key: IdempotencyKey | None = None,
) -> Run:
    """The new run; or, for a repeat of `idempotency_key` with the same body, the
    original run (nothing is created)."""
    if not 1 <= len(recipients) <= max_recipients:
        raise InvalidInput(
            f"recipients must have 1 to {max_recipients} entries",
            {"$.recipients": f"has {len(recipients)} entries; allowed 1 to {max_recipients}"},
        )
    async with tracing.transaction(conn, "publish transaction"):
        campaign = await visible_campaign(conn, campaign_id, caller, lock="share")
        run_id = None
        if idempotency_key is not None:
            # Before the status check: a repeat returns its run even if the campaign
            # was archived since.
            run_id = uuid4()
            if (original := await claim_key(conn, campaign, idempotency_key, run_id)) is not None:
                return original
        if campaign["status"] != "active":
            raise BadState(
                f"campaign is {campaign['status']}; only an active campaign can be published",
                status=campaign["status"],
                allowed=["active"],
            )
        channel, brand_id = campaign["channel"], campaign["brand_id"]
        keys = normalise_all(channel, recipients)
        suppressed = await SuppressionRepository(conn).suppressed_among(brand_id, keys)
        skips = skip_reasons(channel, keys, suppressed)

        runs = RunRepository(conn)
        run = await runs.create(
            campaign_id=campaign["id"],
            brand_id=brand_id,
            total_recipients=len(recipients),
            skipped_count=len(skips),
            created_by=caller.sub,
            run_id=run_id,
        )
        with tracing.span("COPY deliveries", kind=SpanKind.CLIENT, attributes=_COPY):
            await runs.copy_deliveries(_delivery_rows(run["id"], recipients, skips))
        job_ids = await defer_deliveries(conn, str(run["id"]), len(recipients), batch_size)
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
        },
    )
    return Run(**run)


def _delivery_rows(
    run_id: UUID, recipients: list[Recipient], skips: dict[int, str]
) -> Iterator[DeliveryRow]:
    """A generator: COPY consumes it while PostgreSQL already ingests earlier chunks."""
    for position, r in enumerate(recipients):
        if position in skips:
            yield run_id, position, r.person_id, r.recipient, "skipped", skips[position]
        else:
            yield run_id, position, r.person_id, r.recipient, "pending", None


async def defer_deliveries(
    conn: asyncpg.Connection, run_id: str, total: int, batch_size: int
) -> list[int]:
    """One deliver_batch job per `batch_size` positions, deferred on `conn` (so inside
    its transaction: the jobs exist exactly when the run does). With tracing on, each job
    carries this span's trace context (`traceparent`): its run continues the trace."""
    batches: list[dict[str, JSONValue]] = [
        {"run_id": run_id, "first": first, "last": min(first + batch_size, total) - 1}
        for first in range(0, total, batch_size)
    ]
    attributes = {**_DEFER, "messaging.batch.message_count": len(batches), "run_id": run_id}
    with tracing.span("defer deliver_batch", kind=SpanKind.PRODUCER, attributes=attributes):
        if trace_args := tracing.job_trace_args():
            for batch in batches:
                batch.update(trace_args)
        job_ids: list[int] = await deliver_batch.configure(connection=conn).batch_defer_async(
            *batches
        )
    return job_ids
