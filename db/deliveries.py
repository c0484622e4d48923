"""SQL of the worker's side of deliveries: claiming a window of them, recording outcomes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from db.text import storable

MAX_LAST_ERROR = 1000
"""last_error is shown to API users; a provider may answer with a whole HTML page."""
MAX_PROVIDER_MESSAGE_ID = 256


def delivery_id(run_id: UUID | str, position: int) -> str:
    """The public id of a delivery: what the API lists and providers receive as key."""
    return f"{run_id}:{position}"


@dataclass(frozen=True, slots=True)
class Outcome:
    position: int
    status: str  # "sent" | "failed" | "skipped" | "pending" (transient: tried again later)
    attempts: int
    """Attempts made so far, this one included."""
    reason: str | None = None
    last_error: str | None = None
    provider_message_id: str | None = None
    throttled_for: float | None = None
    """The provider asked to wait this many seconds (429 Retry-After): pending, and the
    attempt not counted."""
    retry_in: float | None = None
    """Pending: the seconds before it may be tried again (its backoff, or the provider's
    pause); it is not claimed before (`not_before`), whichever job comes first."""


class DeliveryRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def claim(
        self,
        run_id: UUID,
        first: int,
        last: int,
        *,
        limit: int,
        exclude: Sequence[int],
        now: datetime,
    ) -> list[asyncpg.Record]:
        """Up to `limit` pending deliveries of positions first..last that are due at `now`
        (not waiting for quiet hours to end), row-locked until the transaction ends. Rows
        another worker holds are skipped, not waited for: no two workers ever hold the
        same delivery."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            """
            SELECT position, person_id, recipient, attempts, time_zone FROM deliveries
            WHERE run_id = $1 AND position BETWEEN $2 AND $3 AND status = 'pending'
              AND position <> ALL($4::int[])
              AND (not_before IS NULL OR not_before <= $6)
            ORDER BY position
            LIMIT $5
            FOR UPDATE SKIP LOCKED
            """,
            run_id, first, last, list(exclude), limit, now,
        )  # fmt: skip
        return rows

    async def wait_until(self, run_id: UUID, not_before: Mapping[int, datetime]) -> None:
        """The deliveries at these positions stay pending until the given instants."""
        await self.conn.execute(
            """
            UPDATE deliveries AS d SET not_before = w.not_before
            FROM unnest($2::int[], $3::timestamptz[]) AS w(position, not_before)
            WHERE d.run_id = $1 AND d.position BETWEEN $4 AND $5 AND d.position = w.position
            """,
            run_id, list(not_before), list(not_before.values()),
            min(not_before), max(not_before),
        )  # fmt: skip

    async def next_not_before(
        self, run_id: UUID, first: int, last: int, now: datetime
    ) -> datetime | None:
        """The earliest instant after `now` at which a pending delivery of positions
        first..last stops waiting; None if none waits."""
        at: datetime | None = await self.conn.fetchval(
            """
            SELECT min(not_before) FROM deliveries
            WHERE run_id = $1 AND position BETWEEN $2 AND $3 AND status = 'pending'
              AND not_before > $4
            """,
            run_id, first, last, now,
        )  # fmt: skip
        return at

    async def record(self, run_id: UUID, outcomes: Sequence[Outcome], now: datetime) -> None:
        """The outcomes; a pending one waits `retry_in` seconds from `now` (not_before).

        The range of positions beside the join is for the plan: from the join alone, the
        planner may read every delivery of the run into a hash (the generic plan a prepared
        statement settles on did: 9 ms a window at 30,000 recipients, growing with the
        run); with the range, the primary key finds just the window's rows. (`position =
        ANY(...)` did not do: the planner preferred a scan of the run, filtered.)"""
        if not outcomes:  # a window whose deliveries all wait for quiet hours to end
            return
        positions = [o.position for o in outcomes]
        await self.conn.execute(
            """
            UPDATE deliveries AS d SET
                status = o.status,
                reason = o.reason,
                attempts = o.attempts,
                last_error = coalesce(o.last_error, d.last_error),
                provider_message_id = o.provider_message_id,
                sent_at = CASE WHEN o.status = 'sent' THEN now() END,
                not_before = $1::timestamptz + make_interval(secs => o.retry_in),
                updated_at = now()
            FROM unnest(
                $3::int[], $4::text[], $5::int[], $6::text[], $7::text[], $8::text[],
                $9::float8[]
            ) AS o(position, status, attempts, reason, last_error, provider_message_id, retry_in)
            WHERE d.run_id = $2 AND d.position BETWEEN $10 AND $11 AND d.position = o.position
            """,
            now,
            run_id,
            positions,
            [o.status for o in outcomes],
            [o.attempts for o in outcomes],
            [o.reason for o in outcomes],
            # A provider's words, stored as PostgreSQL can hold them: an answer with a NUL
            # in it would otherwise fail the window after its sends.
            [storable(o.last_error, MAX_LAST_ERROR) for o in outcomes],
            [storable(o.provider_message_id, MAX_PROVIDER_MESSAGE_ID) for o in outcomes],
            [o.retry_in if o.status == "pending" else None for o in outcomes],
            min(positions),
            max(positions),
        )

    async def unrecorded_sends(
        self, run_id: UUID, first: int, last: int
    ) -> dict[int, tuple[int, str]]:
        """Position -> (sends whose outcome could not be recorded, why), for positions
        first..last (migration 0010); empty but after a window met a bug or a refusing
        database."""
        rows = await self.conn.fetch(
            """
            SELECT position, sends, last_error FROM delivery_unrecorded_sends
            WHERE run_id = $1 AND position BETWEEN $2 AND $3
            """,
            run_id, first, last,
        )  # fmt: skip
        return {row["position"]: (row["sends"], row["last_error"]) for row in rows}

    async def count_unrecorded_sends(
        self, run_id: UUID, positions: Sequence[int], error: str
    ) -> None:
        """One more send of each of `positions` that no window recorded, and why."""
        await self.conn.execute(
            """
            INSERT INTO delivery_unrecorded_sends AS u (run_id, position, sends, last_error)
            SELECT $1, position, 1, $3 FROM unnest($2::int[]) AS position
            ON CONFLICT (run_id, position) DO UPDATE
                SET sends = u.sends + 1, last_error = $3, sent_at = now()
            """,
            run_id, list(positions), storable(error, MAX_LAST_ERROR),
        )  # fmt: skip

    async def forget_unrecorded_sends(self, run_id: UUID, positions: Sequence[int]) -> None:
        """In the transaction that records `positions` with attempts that count them."""
        await self.conn.execute(
            "DELETE FROM delivery_unrecorded_sends WHERE run_id = $1 AND position = ANY($2::int[])",
            run_id, list(positions),
        )  # fmt: skip

    async def fail_pending(self, run_id: UUID, first: int, last: int, why: str) -> int:
        """Every pending delivery of positions first..last becomes failed; returns how many."""
        result: str = await self.conn.execute(
            """
            UPDATE deliveries SET status = 'failed', last_error = $4, updated_at = now()
            WHERE run_id = $1 AND position BETWEEN $2 AND $3 AND status = 'pending'
            """,
            run_id, first, last, storable(why, MAX_LAST_ERROR),
        )  # fmt: skip
        return int(result.split()[-1])

    async def skip_pending(self, run_id: UUID, reason: str) -> int:
        """Every pending delivery of the run becomes skipped; returns how many."""
        result: str = await self.conn.execute(
            """
            UPDATE deliveries SET status = 'skipped', reason = $2, updated_at = now()
            WHERE run_id = $1 AND status = 'pending'
            """,
            run_id, reason,
        )  # fmt: skip
        return int(result.split()[-1])
