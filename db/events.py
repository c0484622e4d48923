"""SQL of the events outbox: every event POSTed to EVENTS_WEBHOOK_URL (a run's status
changes, new suppressions) is a row written in the transaction of the change it tells,
together with the job that sends it: neither exists without the other, nor without the
change.

Events belong to a stream (`run:<run_id>`, `brand:<brand_id>`): the send jobs of a stream
share a procrastinate lock, so they run one at a time, oldest first, and a stream's later
event never reaches the receiver before an earlier one (jobs/events.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from db import queue
from db.text import storable

RUN_EVENT_TYPES = {
    "running": "run.started",
    "completed": "run.completed",
    "cancelled": "run.cancelled",
}
"""The event of each run status that has one (`queued` has none)."""
SUPPRESSION_CREATED = "suppression.created"
COLUMNS = "id, seq, stream, type, occurred_at, data, attempts"


def run_stream(run_id: UUID | str) -> str:
    """A run's status changes, in the order they committed (under the run's row lock)."""
    return f"run:{run_id}"


def brand_stream(brand_id: str) -> str:
    """A brand's new suppressions, in the order they committed: what a CRM syncs consent
    from. Per brand, not per address: a lock name (below) must hold no patient data."""
    return f"brand:{brand_id}"


def stream_lock(stream: str) -> str:
    """procrastinate's lock of a stream's send jobs. A run's keeps the name it had before
    events were generalised (migration 0016), so that a job queued by the release before
    and one of this release never run side by side."""
    kind, _, key = stream.partition(":")
    return f"run-events:{key}" if kind == "run" else f"events:{stream}"


class EventRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def record(
        self,
        stream: str,
        events: Sequence[tuple[str, dict[str, Any]]],
        *,
        run_id: UUID | None = None,
    ) -> list[UUID]:
        """The (type, data) `events` of one stream, oldest first, and one job that sends
        them, in the caller's transaction. `run_id`: the run whose events they are."""
        send = queue.job(
            queue.SEND_EVENTS,
            queue.EVENTS_QUEUE,
            queue.HOUSEKEEPING_PRIORITY,
            {"stream": stream},
            lock=stream_lock(stream),
        )
        [job_id] = await queue.defer(self.conn, [send])
        rows = await self.conn.fetch(
            """
            INSERT INTO events (stream, run_id, type, data, job_id)
            SELECT $1, $2, e.type, e.data, $5
            FROM unnest($3::text[], $4::jsonb[]) WITH ORDINALITY AS e(type, data, n)
            ORDER BY e.n
            RETURNING id
            """,
            stream, run_id, [e[0] for e in events], [e[1] for e in events], job_id,
        )  # fmt: skip
        return [row["id"] for row in rows]

    async def pending(self, stream: str) -> list[asyncpg.Record]:
        """The stream's events still to send, in the order they happened."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            f"SELECT {COLUMNS} FROM events WHERE stream = $1 AND status = 'pending' ORDER BY seq",
            stream,
        )
        return rows

    async def delivered(self, event_id: UUID) -> None:
        await self.conn.execute(
            """
            UPDATE events SET status = 'delivered', attempts = attempts + 1,
                last_attempt_at = now(), delivered_at = now()
            WHERE id = $1
            """,
            event_id,
        )

    async def failed_attempt(self, event_id: UUID, error: str) -> datetime:
        """One more failed attempt; returns the database's now()."""
        now: datetime = await self.conn.fetchval(
            """
            UPDATE events SET attempts = attempts + 1, last_attempt_at = now(),
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
            "UPDATE events SET status = 'expired' WHERE id = $1 AND status = 'pending'",
            event_id,
        )

    async def unsent(self, stream: str) -> int:
        """No receiver is configured: the stream's pending events will never be sent."""
        result: str = await self.conn.execute(
            "UPDATE events SET status = 'unsent' WHERE stream = $1 AND status = 'pending'",
            stream,
        )
        return int(result.split()[-1])
