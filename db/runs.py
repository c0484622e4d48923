"""SQL of the runs table: a run, its counters and its status changes (their events)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from db.audit import AuditEvent, audit_insert
from db.events import RUN_EVENT_TYPES, EventRepository, run_stream
from db.params import Params

ENDED = ("completed", "cancelled")
"""Run statuses after which nothing is sent any more."""
NOT_ENDED = ("scheduled", "queued", "running")
"""Run statuses of a run that may still send."""

COLUMNS = (
    "id, campaign_id, brand_id, status, total_recipients, sent_count, failed_count, "
    "skipped_count, started_at, completed_at, created_by, created_at, retry_of, scheduled_for"
)
"""The fields of a run as the API shows it (app.domain.schemas.Run)."""
_RUN_FIELDS = [column.strip() for column in COLUMNS.split(",")]
UPDATED_COLUMNS = ", ".join(f"runs.{column}" for column in _RUN_FIELDS)
"""A run's fields in the RETURNING of an UPDATE of `runs` (record_status_change)."""


def initial_status(scheduled_for: datetime | None) -> str:
    """A new run waits for its send_at, or is queued for its workers at once."""
    return "queued" if scheduled_for is None else "scheduled"


def counted(sent: str, failed: str, skipped: str) -> str:
    """The SET list that adds outcomes (SQL expressions) to a run's counters: the run is
    `running` from its first attempt and `completed` by the window that settles its last
    pending delivery."""
    settled = f"sent_count + failed_count + skipped_count + {sent} + {failed} + {skipped}"
    return f"""
        sent_count = sent_count + {sent},
        failed_count = failed_count + {failed},
        skipped_count = skipped_count + {skipped},
        started_at = coalesce(started_at, now()),
        status = CASE WHEN {settled} = total_recipients THEN 'completed' ELSE 'running' END,
        completed_at = CASE WHEN {settled} = total_recipients THEN now() END"""


class RunRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def create(
        self,
        *,
        campaign_id: UUID,
        brand_id: str,
        total_recipients: int,
        skipped_count: int,
        created_by: str,
        run_id: UUID,
        audit: AuditEvent,
        retry_of: UUID | None = None,
        scheduled_for: datetime | None = None,
        with_data: bool = False,
    ) -> asyncpg.Record:
        """The new run, `initial_status(scheduled_for)`, and its `audit` row in the same
        statement. `with_data`: some of its deliveries hold recipients' data, to be erased
        after the run (db/retention.py)."""
        audit_sql, *audit_args = audit_insert(audit, first=11)
        record: asyncpg.Record = await self.conn.fetchrow(
            f"""
            WITH audited AS ({audit_sql})
            INSERT INTO runs
                (id, campaign_id, brand_id, total_recipients, skipped_count, created_by,
                 retry_of, scheduled_for, status, with_data)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            RETURNING {COLUMNS}
            """,
            run_id, campaign_id, brand_id, total_recipients, skipped_count, created_by,
            retry_of, scheduled_for, initial_status(scheduled_for), with_data,
            *audit_args,
        )  # fmt: skip
        return record

    async def get(self, campaign_id: UUID, run_id: UUID) -> asyncpg.Record | None:
        record: asyncpg.Record | None = await self.conn.fetchrow(
            f"SELECT {COLUMNS} FROM runs WHERE id = $1 AND campaign_id = $2", run_id, campaign_id
        )
        return record

    async def get_by_id(self, run_id: UUID) -> asyncpg.Record | None:
        record: asyncpg.Record | None = await self.conn.fetchrow(
            f"SELECT {COLUMNS} FROM runs WHERE id = $1", run_id
        )
        return record

    async def page(
        self,
        campaign_id: UUID,
        *,
        status: str | None = None,
        after: tuple[datetime, UUID] | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        """Up to `limit` runs of the campaign (of `status` only, if given), newest first,
        after (created_at, id) `after`. The index (campaign_id, created_at, id) serves
        the walk; a status filter is checked along it (a campaign has few runs)."""
        p = Params()
        conditions = [f"campaign_id = {p(campaign_id)}"]
        if status is not None:
            conditions.append(f"status = {p(status)}")
        if after is not None:
            conditions.append(f"(created_at, id) < ({p(after[0])}, {p(after[1])})")
        rows: list[asyncpg.Record] = await self.conn.fetch(
            f"""
            SELECT {COLUMNS} FROM runs WHERE {" AND ".join(conditions)}
            ORDER BY created_at DESC, id DESC LIMIT {p(limit)}
            """,
            *p.values,
        )
        return rows

    async def delivery_target(self, run_id: UUID) -> asyncpg.Record | None:
        """What a job sends for the run, read once per job: its brand, and its campaign's
        name, channel, texts, quiet hours and topic (a campaign's content can change only
        while it is a draft, before any run)."""
        record: asyncpg.Record | None = await self.conn.fetchrow(
            """
            SELECT r.brand_id, r.campaign_id, c.name, c.channel, c.sender, c.subject, c.body,
                   c.html_body, c.quiet_hours, c.topic
            FROM runs r JOIN campaigns c ON c.id = r.campaign_id
            WHERE r.id = $1
            """,
            run_id,
        )
        return record

    async def lock(self, run_id: UUID) -> str | None:
        """Lock the run's row until the transaction ends; its status. Whoever changes a
        run's deliveries and counters together (cancel, a window's record, a give-up)
        locks the run first: none of them waits for another's rows while holding its own."""
        status: str | None = await self.conn.fetchval(
            "SELECT status FROM runs WHERE id = $1 FOR UPDATE", run_id
        )
        return status

    async def count_outcomes(
        self, run_id: UUID, sent: int, failed: int, skipped: int
    ) -> str | None:
        """Add to the counters in the same transaction as the deliveries changed; the run is
        `running` from its first attempt and `completed` by the window that settles its
        last pending delivery. Returns the run's new status (None if it had ended)."""
        record: asyncpg.Record | None = await self.conn.fetchrow(
            f"""
            UPDATE runs SET {counted("$2", "$3", "$4")}
            FROM {_BEFORE}
            WHERE runs.id = $1 AND runs.status IN ('scheduled', 'queued', 'running')
            RETURNING before.status AS previous_status, {UPDATED_COLUMNS}
            """,
            run_id, sent, failed, skipped,
        )  # fmt: skip
        if record is None:
            return None
        await self.record_status_change(record)
        status: str = record["status"]
        return status

    async def cancel(self, run_id: UUID, skipped: int) -> dict[str, Any]:
        """The run, now cancelled (its fields as the API shows them)."""
        record: asyncpg.Record = await self.conn.fetchrow(
            f"""
            UPDATE runs SET status = 'cancelled', skipped_count = skipped_count + $2,
                            completed_at = now()
            FROM {_BEFORE}
            WHERE runs.id = $1
            RETURNING before.status AS previous_status, {UPDATED_COLUMNS}
            """,
            run_id, skipped,
        )  # fmt: skip
        await self.record_status_change(record)
        return _run_of(record)

    async def record_status_change(self, change: asyncpg.Record) -> None:
        """Every status change to running, completed or cancelled writes its event (and
        the job that sends it) in the transaction of the change. `change`: the run's row
        after an UPDATE, with its `previous_status`."""
        status = change["status"]
        if status != change["previous_status"] and status in RUN_EVENT_TYPES:
            run_id = change["id"]
            event = (RUN_EVENT_TYPES[status], _run_of(change))
            await EventRepository(self.conn).record(run_stream(run_id), [event], run_id=run_id)


def _run_of(record: asyncpg.Record) -> dict[str, Any]:
    return {field: record[field] for field in _RUN_FIELDS}


# The run's status before an UPDATE (RETURNING shows only the new row): read with the
# row lock that the UPDATE takes anyway, so nothing can change it in between.
_BEFORE = "(SELECT status FROM runs WHERE id = $1 FOR UPDATE) AS before"
