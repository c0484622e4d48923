"""SQL of the deliveries table: written by publish (COPY), listed by the API, claimed and
recorded by the worker."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec

from db.params import Params
from db.runs import UPDATED_COLUMNS, counted
from db.text import storable

MAX_LAST_ERROR = 1000
"""last_error is shown to API users; a provider may answer with a whole HTML page."""
MAX_PROVIDER_MESSAGE_ID = 256


DELIVERY_COLUMNS = (
    "run_id, position, person_id, recipient, status, reason, attempts, last_error, "
    "provider_message_id, sent_at, outcome, outcome_at, outcome_detail, not_before"
)
DELIVERY_COPY_COLUMNS = (
    "run_id", "position", "person_id", "recipient", "status", "reason", "time_zone"
)  # fmt: skip

# One delivery as publish writes it:
# (run_id, position, person_id, recipient, status, reason, time_zone).
DeliveryRow = tuple[UUID, int, str, str, str, str | None, str | None]
DataRow = tuple[UUID, int, msgspec.Raw]
"""A recipient's data as publish writes it (table delivery_data): run_id, position, and
its JSON text (msgspec.Raw: the pool's jsonb codec sends it as it is)."""


def delivery_id(run_id: UUID | str, position: int) -> str:
    """The public id of a delivery: what the API lists and providers receive as key."""
    return f"{run_id}:{position}"


@dataclass(frozen=True, slots=True)
class Outcome:
    position: int
    status: str  # "sent" | "failed" | "skipped" | "pending" (transient: tried again later)
    attempts: int
    """Attempts made so far, this one included (what the claim counted, less a send that
    did not happen or was throttled)."""
    throttles: int = 0
    """Throttled answers so far, this one included."""
    reason: str | None = None
    last_error: str | None = None
    provider_message_id: str | None = None
    throttled_for: float | None = None
    """The provider asked to wait this many seconds (429): pending, and no attempt
    counted."""
    retry_in: float | None = None
    """Pending: the seconds before it may be tried again (its backoff, or the provider's
    pause); it is not claimed before (`not_before`), whichever job comes first."""
    not_before: datetime | None = None
    """Pending: the instant it may go (the end of its recipient's quiet hours)."""
    opted_out: bool = False
    """Failed because the recipient opted out at the provider (Twilio's 21610): the record
    suppresses the address for the brand in its transaction."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """What a window's claim found: the run as it decides, and the deliveries it holds."""

    status: str | None
    """The run's status; None if there is no such run."""
    now: datetime | None
    """The database's now() (+ the test clock's offset): what is due is decided by it."""
    paused_for: float | None
    """Seconds the provider is still paused for (nothing was claimed then)."""
    suppressions: bool
    """Whether the brand has any suppression (else no address needs a look-up)."""
    rows: list[asyncpg.Record]
    """position, person_id, recipient, tried (attempts before this claim), throttles,
    time_zone, data (the recipient's variables, decoded; None if none)."""


@dataclass(frozen=True, slots=True)
class Recorded:
    sent: int
    failed: int
    skipped: int
    run_status: str | None
    """The run's status as the record found it (locked): `cancelled` if a cancel committed
    while the window was sending."""
    wake_at: datetime | None
    """The earliest `not_before` of the deliveries it left pending, on the database's
    real clock: when the range's follow-up job is due."""
    change: asyncpg.Record | None
    """The run after its counters moved (with `previous_status`), if it had not ended:
    for its status change's event (RunRepository.record_status_change)."""


class DeliveryRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def page(
        self, run_id: UUID, *, status: str | None, after: int, limit: int
    ) -> list[asyncpg.Record]:
        """Up to `limit` deliveries of the run after position `after`, in position order.

        The primary key (run_id, position) serves both shapes; the status filter is
        checked on the run's rows as the walk goes, so a page of a rare status may
        read more of the run than it returns (never more than the run).
        """
        p = Params()
        status_filter = f"AND status = {p(status)}" if status is not None else ""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            f"""
            SELECT {DELIVERY_COLUMNS} FROM deliveries
            WHERE run_id = {p(run_id)} AND position > {p(after)} {status_filter}
            ORDER BY position LIMIT {p(limit)}
            """,
            *p.values,
        )
        return rows

    async def failed_recipients(self, run_id: UUID) -> list[asyncpg.Record]:
        """(person_id, recipient, time_zone, data) of the run's failed deliveries, in
        position order; `data` as its JSON text (None: none)."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            """
            SELECT d.person_id, d.recipient, d.time_zone, dd.data::text AS data
            FROM deliveries d
            LEFT JOIN delivery_data dd ON dd.run_id = d.run_id AND dd.position = d.position
            WHERE d.run_id = $1 AND d.status = 'failed' ORDER BY d.position
            """,
            run_id,
        )
        return rows

    async def copy(self, rows: Iterable[DeliveryRow]) -> None:
        """Bulk-write deliveries with COPY (binary): the one write that scales with the list."""
        await self.conn.copy_records_to_table(
            "deliveries", records=rows, columns=DELIVERY_COPY_COLUMNS
        )

    async def copy_data(self, rows: Iterable[DataRow]) -> None:
        """Bulk-write recipients' data (table delivery_data) with COPY (binary)."""
        await self.conn.copy_records_to_table(
            "delivery_data", records=rows, columns=("run_id", "position", "data")
        )

    async def claim(
        self,
        run_id: UUID,
        first: int,
        last: int,
        *,
        limit: int,
        exclude: Sequence[int],
        token: UUID,
        lease_seconds: float,
        provider: str,
        max_attempts: int,
        clock_offset: timedelta = timedelta(0),
    ) -> Claimed:
        """One statement (its own transaction): up to `limit` pending deliveries of
        positions first..last that are due (`not_before`), not claimed by a live window
        (`claimed_until`) and not locked, now claimed by `token` until `lease_seconds` from
        now, with one more attempt counted (below `max_attempts`: at the limit the window
        gives up without a send). Nothing is claimed while the run has ended or the
        provider is paused. Rows another transaction holds are skipped, not waited for.

        The `UPDATE` is bounded by the positions picked, as `record` is by its window's:
        on a young partition without statistics the planner otherwise joined every row of
        the job's range with the picked ones (7 ms a window instead of 0.3 ms)."""
        rows = await self.conn.fetch(
            """
            WITH run AS (
                SELECT r.status, now() + $10::interval AS now,
                       (SELECT extract(epoch FROM p.until - clock_timestamp())
                        FROM provider_pauses p
                        WHERE p.provider = $8 AND p.until > clock_timestamp()) AS paused_for,
                       EXISTS (SELECT 1 FROM suppressions s WHERE s.brand_id = r.brand_id)
                           AS suppressions
                FROM runs r WHERE r.id = $1
            ), due AS (
                SELECT d.position, d.attempts FROM deliveries d, run
                WHERE d.run_id = $1 AND d.position BETWEEN $2 AND $3 AND d.status = 'pending'
                  AND run.status IN ('scheduled', 'queued', 'running')
                  AND run.paused_for IS NULL
                  AND d.position <> ALL($4::int[])
                  AND (d.not_before IS NULL OR d.not_before <= run.now)
                  AND (d.claimed_until IS NULL OR d.claimed_until <= now())
                ORDER BY d.position
                LIMIT $5
                FOR UPDATE OF d SKIP LOCKED
            ), claimed AS (
                UPDATE deliveries d SET
                    claim = $6,
                    claimed_until = now() + make_interval(secs => $7),
                    attempts = CASE WHEN d.attempts < $9 THEN d.attempts + 1 ELSE d.attempts END
                FROM due
                WHERE d.run_id = $1
                  AND d.position BETWEEN (SELECT min(position) FROM due)
                                     AND (SELECT max(position) FROM due)
                  AND d.position = due.position
                RETURNING d.position, d.person_id, d.recipient, due.attempts AS tried,
                          d.throttles, d.time_zone
            )
            SELECT run.status, run.now, run.paused_for, run.suppressions, c.*, dd.data
            FROM run LEFT JOIN claimed c ON true
            LEFT JOIN delivery_data dd ON dd.run_id = $1 AND dd.position = c.position
            ORDER BY c.position
            """,
            run_id, first, last, list(exclude), limit, token, lease_seconds, provider,
            max_attempts, clock_offset,
        )  # fmt: skip
        if not rows:
            return Claimed(None, None, None, False, [])
        head = rows[0]
        paused_for = None if head["paused_for"] is None else float(head["paused_for"])
        return Claimed(
            head["status"],
            head["now"],
            paused_for,
            head["suppressions"],
            [row for row in rows if row["position"] is not None],
        )

    async def record(
        self,
        run_id: UUID,
        token: UUID,
        outcomes: Sequence[Outcome],
        clock_offset: timedelta = timedelta(0),
    ) -> Recorded:
        """The outcomes of the deliveries still claimed by `token` and still pending (or
        skipped by a cancel that committed during their send: a `sent` or `failed`
        outcome is what happened to them), their claim released. A pending one waits
        `retry_in` seconds from now, or until its `not_before`. Locks the run first, as
        cancel does: a record and a cancel never wait for each other's rows.

        The range of positions beside the join is for the plan: from the join alone, the
        planner may read every delivery of the run into a hash (the generic plan a prepared
        statement settles on did: 9 ms a window at 30,000 recipients, growing with the
        run); with the range, the primary key finds just the window's rows. (`position =
        ANY(...)` did not do: the planner preferred a scan of the run, filtered.)"""
        outcomes = sorted(outcomes, key=lambda o: o.position)  # rows locked in key order
        positions = [o.position for o in outcomes]
        row = await self.conn.fetchrow(
            f"""
            WITH run AS (
                SELECT status FROM runs WHERE id = $1 FOR UPDATE
            ), o AS (
                SELECT * FROM unnest(
                    $2::int[], $3::text[], $4::int[], $5::int[], $6::text[], $7::text[],
                    $8::text[], $9::float8[], $10::timestamptz[]
                ) AS o(position, status, attempts, throttles, reason, last_error,
                       provider_message_id, retry_in, not_before)
            ), updated AS (
                UPDATE deliveries AS d SET
                    status = o.status,
                    reason = o.reason,
                    attempts = o.attempts,
                    throttles = o.throttles,
                    last_error = coalesce(o.last_error, d.last_error),
                    provider_message_id = o.provider_message_id,
                    sent_at = CASE WHEN o.status = 'sent' THEN now() END,
                    not_before = coalesce(
                        o.not_before, now() + $12::interval + make_interval(secs => o.retry_in)
                    ),
                    claim = NULL,
                    claimed_until = NULL,
                    updated_at = now()
                FROM o, run
                WHERE d.run_id = $1 AND d.position BETWEEN $13 AND $14
                  AND d.position = o.position AND d.claim = $11
                  AND (d.status = 'pending'
                       OR (run.status = 'cancelled' AND d.status = 'skipped'
                           AND d.reason = 'cancelled' AND o.status IN ('sent', 'failed')))
                RETURNING d.status, d.not_before
            ), counts AS (
                SELECT count(*) FILTER (WHERE status = 'sent') AS sent,
                       count(*) FILTER (WHERE status = 'failed') AS failed,
                       count(*) FILTER (WHERE status = 'skipped') AS skipped,
                       min(not_before) FILTER (WHERE status = 'pending') - $12::interval
                           AS wake_at
                FROM updated
            ), counted AS (
                UPDATE runs SET {counted("c.sent", "c.failed", "c.skipped")}
                FROM counts c, run
                WHERE runs.id = $1 AND run.status IN ('scheduled', 'queued', 'running')
                RETURNING run.status AS previous_status, {UPDATED_COLUMNS}
            ), after_cancel AS (
                -- Skipped by a cancel that committed while they were being sent: they move
                -- from the skipped count to the outcome the provider gave.
                UPDATE runs SET sent_count = sent_count + c.sent,
                                failed_count = failed_count + c.failed,
                                skipped_count = skipped_count - c.sent - c.failed
                FROM counts c, run
                WHERE runs.id = $1 AND run.status = 'cancelled' AND c.sent + c.failed > 0
            )
            SELECT counts.*, (SELECT status FROM run) AS run_status, counted.*
            FROM counts LEFT JOIN counted ON true
            """,
            run_id,
            positions,
            [o.status for o in outcomes],
            [o.attempts for o in outcomes],
            [o.throttles for o in outcomes],
            [o.reason for o in outcomes],
            # A provider's words, stored as PostgreSQL can hold them: an answer with a NUL
            # in it would otherwise fail the record after its sends.
            [storable(o.last_error, MAX_LAST_ERROR) for o in outcomes],
            [storable(o.provider_message_id, MAX_PROVIDER_MESSAGE_ID) for o in outcomes],
            [o.retry_in if o.status == "pending" else None for o in outcomes],
            [o.not_before if o.status == "pending" else None for o in outcomes],
            token,
            clock_offset,
            min(positions),
            max(positions),
        )
        assert row is not None
        change = row if row["previous_status"] is not None else None
        return Recorded(
            row["sent"], row["failed"], row["skipped"], row["run_status"], row["wake_at"], change
        )

    async def release(self, run_id: UUID, token: UUID, attempts: Mapping[int, int]) -> None:
        """Give back deliveries claimed by `token` without an outcome (the worker aborts),
        with their attempts as given: a send that never started is not one."""
        await self.conn.execute(
            """
            UPDATE deliveries AS d SET attempts = a.attempts, claim = NULL, claimed_until = NULL
            FROM unnest($3::int[], $4::int[]) AS a(position, attempts)
            WHERE d.run_id = $1 AND d.position = a.position AND d.claim = $2
              AND d.status = 'pending'
            """,
            run_id, token, list(attempts), list(attempts.values()),
        )  # fmt: skip

    async def renew(
        self, claims: Sequence[tuple[UUID, UUID, Sequence[int]]], lease_seconds: float
    ) -> Counter[UUID]:
        """Extend the claims (run_id, token, positions) of the windows in flight; how many
        deliveries each token still holds (a lapsed claim that another window took is not
        its own)."""
        run_ids: list[UUID] = []
        tokens: list[UUID] = []
        positions: list[int] = []
        for run_id, token, claimed in claims:
            run_ids += [run_id] * len(claimed)
            tokens += [token] * len(claimed)
            positions += claimed
        held = await self.conn.fetch(
            """
            UPDATE deliveries AS d SET claimed_until = now() + make_interval(secs => $4)
            FROM unnest($1::uuid[], $2::uuid[], $3::int[]) AS c(run_id, claim, position)
            WHERE d.run_id = c.run_id AND d.position = c.position AND d.claim = c.claim
              AND d.status = 'pending'
            RETURNING d.claim
            """,
            run_ids, tokens, positions, lease_seconds,
        )  # fmt: skip
        return Counter(row["claim"] for row in held)

    async def next_due(
        self, run_id: UUID, first: int, last: int, clock_offset: timedelta = timedelta(0)
    ) -> datetime | None:
        """When the first pending delivery of positions first..last may be claimed, on the
        database's real clock: its `not_before` or the end of another window's claim,
        whichever is later; a second from now for one due and unclaimed (a claim skipped
        it: another transaction held its row). None if none is pending."""
        at: datetime | None = await self.conn.fetchval(
            """
            SELECT min(CASE WHEN greatest(claimed_until, not_before - $4::interval) > now()
                            THEN greatest(claimed_until, not_before - $4::interval)
                            ELSE now() + interval '1 second' END)
            FROM deliveries
            WHERE run_id = $1 AND position BETWEEN $2 AND $3 AND status = 'pending'
            """,
            run_id, first, last, clock_offset,
        )  # fmt: skip
        return at

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
