"""SQL of the run_events outbox: each run status change to running, completed or cancelled
writes an event row and defers the job that POSTs it, both in the transaction of the
change (so neither exists without the other, nor without the change)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from db import queue
from db.text import storable

EVENT_TYPES = {"running": "run.started", "completed": "run.completed", "cancelled": "run.cancelled"}
"""The event of each run status that has one (`queued` has none)."""
COLUMNS = "id, seq, run_id, type, occurred_at, data, attempts"


def events_lock(run_id: UUID | str) -> str:
    """procrastinate's lock of a run's send jobs: they run one at a time, oldest first, so
    that a later event of the run can never overtake an earlier one."""
    return f"run-events:{run_id}"


class RunEventRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def record(self, run_id: UUID, status: str, run: dict[str, Any]) -> UUID:
        """The event of the run's new `status` (`run` is its body as the API shows it) and
        the job that sends it, in the caller's transaction."""
        send = queue.job(
            queue.SEND_RUN_EVENTS,
            queue.EVENTS_QUEUE,
            queue.HOUSEKEEPING_PRIORITY,
            {"run_id": str(run_id)},
            lock=events_lock(run_id),
        )
        [job_id] = await queue.defer(self.conn, [send])
        event_id: UUID = await self.conn.fetchval(
            """
            INSERT INTO run_events (run_id, type, data, job_id) VALUES ($1, $2, $3, $4)
            RETURNING id
            """,
            run_id, EVENT_TYPES[status], run, job_id,
        )  # fmt: skip
        return event_id

    async def pending(self, run_id: UUID) -> list[asyncpg.Record]:
        """The run's events still to send, in the order they happened."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            f"SELECT {COLUMNS} FROM run_events WHERE run_id = $1 AND status = 'pending' "
            "ORDER BY seq",
            run_id,
        )
        return rows

    async def delivered(self, event_id: UUID) -> None:
        await self.conn.execute(
            """
            UPDATE run_events SET status = 'delivered', attempts = attempts + 1,
                last_attempt_at = now(), delivered_at = now()
            WHERE id = $1
            """,
            event_id,
        )

    async def failed_attempt(self, event_id: UUID, error: str) -> datetime:
        """One more failed attempt; returns the database's now()."""
        now: datetime = await self.conn.fetchval(
            """
            UPDATE run_events SET attempts = attempts + 1, last_attempt_at = now(),
                last_error = $2
            WHERE id = $1
            RETURNING now()
            """,
            event_id, storable(error, 1000),  # the receiver's words: a NUL would fail this
        )  # fmt: skip
        return now

    async def expire(self, event_id: UUID) -> None:
        """Given up for good (EVENTS_RETRY_HOURS) so that a later event may go: it is never
        sent after that one."""
        await self.conn.execute(
            "UPDATE run_events SET status = 'expired' WHERE id = $1 AND status = 'pending'",
            event_id,
        )

    async def unsent(self, run_id: UUID) -> int:
        """No receiver is configured: the run's pending events will never be sent."""
        result: str = await self.conn.execute(
            "UPDATE run_events SET status = 'unsent' WHERE run_id = $1 AND status = 'pending'",
            run_id,
        )
        return int(result.split()[-1])
