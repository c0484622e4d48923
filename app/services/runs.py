"""Business rules of runs: reading them and their deliveries, cancelling one."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from app.domain.access import Caller
from app.domain.errors import BadState, Gone, NotFound
from app.domain.schemas import Delivery, DeliveryPage, Run, RunPage
from app.services.campaigns import parse_id, visible_campaign
from app.services.pagination import ByCreation, ByPosition, decode_cursor, listing_of, split_page
from db.audit import AuditEvent, record_audit
from db.deliveries import DeliveryRepository, delivery_id
from db.jobs import JobRepository
from db.retention import RetentionRepository
from db.runs import ENDED, NOT_ENDED, RunRepository


async def visible_run(
    conn: asyncpg.Connection, campaign_id: str, run_id: str, caller: Caller
) -> asyncpg.Record:
    """The run, if it is one of a campaign the caller may see; otherwise NotFound."""
    campaign = await visible_campaign(conn, campaign_id, caller)
    record = await RunRepository(conn).get(campaign["id"], parse_id(run_id, "run"))
    if record is None:
        raise NotFound(f"run {run_id} does not exist")
    return record


async def cancel_run(
    conn: asyncpg.Connection, campaign_id: str, run_id: str, caller: Caller
) -> Run:
    """Pending deliveries become skipped (`cancelled`), and the run's delivery jobs still
    waiting in the queue (all of a scheduled run's) are removed. Once this commits, no
    window claims a delivery of the run; a window that claimed some before and is sending
    them records what the provider answered (docs/adr/0050-cancel-does-not-wait.md)."""
    async with conn.transaction():
        run = await visible_run(conn, campaign_id, run_id, caller)
        runs = RunRepository(conn)
        # Read again, locked: a window's record may have completed it since.
        status = await runs.lock(run["id"])
        if status in ENDED:
            raise BadState(
                f"run is {status}; only a scheduled, queued or running run can be cancelled",
                status=status,
                allowed=list(NOT_ENDED),
            )
        skipped = await DeliveryRepository(conn).skip_pending(run["id"], "cancelled")
        await JobRepository(conn).delete_waiting_deliveries(run["id"])
        cancelled = await runs.cancel(run["id"], skipped)
        changes = {"status": {"old": status, "new": cancelled["status"]}, "cancelled": skipped}
        await record_audit(
            conn,
            AuditEvent(
                run["brand_id"], caller.sub, "run.cancelled", "run", str(run["id"]), changes
            ),
        )
        return Run(**cancelled)


async def list_runs(
    conn: asyncpg.Connection,
    campaign_id: str,
    caller: Caller,
    *,
    status: str | None = None,
    limit: int,
    cursor: str | None,
    cursor_key: bytes,
) -> RunPage:
    """The campaign's runs (of `status` only, if given), newest first."""
    campaign = await visible_campaign(conn, campaign_id, caller)
    # A filter is part of the listing; without one the listing is what it always was, so
    # cursors issued before the filter existed still hold.
    filters = () if status is None else (status,)
    listing = listing_of(caller.brands, "runs", str(campaign["id"]), *filters)
    after = decode_cursor(cursor_key, listing, cursor, ByCreation) if cursor else None
    rows = await RunRepository(conn).page(
        campaign["id"], status=status, after=after, limit=limit + 1
    )
    page, next_cursor = split_page(
        rows, limit, cursor_key, listing, lambda row: (row["created_at"], row["id"])
    )
    return RunPage(items=[Run(**row) for row in page], next_cursor=next_cursor)


async def ensure_deliveries_kept(
    conn: asyncpg.Connection, run: asyncpg.Record, retention: timedelta | None
) -> None:
    """Gone once the run's deliveries are past `retention` (removed, or about to be:
    jobs/retention.py)."""
    if await RetentionRepository(conn).deliveries_gone(run["id"], retention):
        raise Gone(
            f"the deliveries of run {run['id']} were removed: it ended more than the "
            "retention period ago; the run and its counters remain",
            {"completed_at": run["completed_at"].isoformat()},
        )


async def list_deliveries(
    conn: asyncpg.Connection,
    campaign_id: str,
    run_id: str,
    caller: Caller,
    *,
    status: str | None,
    limit: int,
    cursor: str | None,
    cursor_key: bytes,
    retention: timedelta | None = None,
) -> DeliveryPage:
    """The run's deliveries in the order of the publish request (position). Gone once
    they are past `retention` (removed, or about to be: jobs/retention.py)."""
    run = await visible_run(conn, campaign_id, run_id, caller)
    await ensure_deliveries_kept(conn, run, retention)
    listing = listing_of(caller.brands, "deliveries", str(run["id"]), status)
    after = decode_cursor(cursor_key, listing, cursor, ByPosition)[0] if cursor else -1
    rows = await DeliveryRepository(conn).page(
        run["id"], status=status, after=after, limit=limit + 1
    )
    page, next_cursor = split_page(rows, limit, cursor_key, listing, lambda row: (row["position"],))
    return DeliveryPage(items=[_delivery(row) for row in page], next_cursor=next_cursor)


def _delivery(row: asyncpg.Record) -> Delivery:
    return Delivery(
        id=delivery_id(row["run_id"], row["position"]),
        person_id=row["person_id"],
        recipient=row["recipient"],
        status=row["status"],
        reason=row["reason"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        provider_message_id=row["provider_message_id"],
        sent_at=row["sent_at"],
        outcome=row["outcome"],
        outcome_at=row["outcome_at"],
        outcome_detail=row["outcome_detail"],
        not_before=row["not_before"],
    )
