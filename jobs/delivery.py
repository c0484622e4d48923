"""deliver_chunk: send the pending deliveries of one job's range, window by window.

Each window is one transaction that
1. holds the run's delivery lock shared (cancel takes it exclusive) and stops if the run
   was cancelled,
2. claims up to `window` pending deliveries with FOR UPDATE SKIP LOCKED, so that two
   workers never hold the same delivery,
3. re-checks the brand's suppressions for exactly those addresses,
4. sends them, at most `worker_concurrency` at once in the process,
5. records every outcome and the run's counters, and commits.
A worker killed mid-window loses the window's transaction: its deliveries are pending
again and only those (the sends in flight or answered but not committed) can reach the
provider twice, with the same delivery id as idempotency key.

A transient failure leaves the delivery pending with one more attempt; the job does not
retry it itself: the window that met it defers, in its own transaction, a follow-up job
for the range after the backoff (`schedule_retry`).

A delivery whose recipient is inside the campaign's quiet hours is not sent and spends no
attempt: it stays pending with `not_before` = the end of the window (UTC), which claims
respect, and the window defers the range's follow-up job for the earliest such instant
(the same job as for transient failures: due at the earliest instant either needs). The
last window of every job also makes sure that such a job exists while deliveries of its
range wait (`_wait_for_quiet_hours`), so no wait depends on a process remembering it.

A window whose sends happened but whose transaction then fails for a reason that would
fail again (a bug of ours, a constraint, text the database refuses) is not rolled back
into another send: `_salvage` records what it can of it, delivery by delivery, with the
attempt spent. Only the database being away makes a window simply go again, without
spending attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from uuid import UUID

import asyncpg

from app import tracing
from app.recipients import normalise
from app.schedule import QuietWindow
from db.deliveries import DeliveryRepository, Outcome, delivery_id
from db.pool import database_away
from db.rate_limits import RateLimitRepository
from db.runs import ENDED, RunRepository, delivery_window, savepoint
from db.suppressions import SuppressionRepository
from jobs.limits import MAX_INLINE_WAIT_SECONDS
from jobs.metrics import count_outcomes, provider_latency
from jobs.providers import OutgoingMessage, PermanentError, Provider, Throttled, TransientError
from jobs.resources import TIME_SLICE_SECONDS, WorkerResources

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_SECONDS = 300.0


class DeliveryInterrupted(Exception):
    """The worker is stopping; the job goes back to the queue with its rest pending."""


class UnrecordedSends(Exception):
    """A window failed after its sends, for a reason other than the database being away:
    its sends are counted per delivery (delivery_unrecorded_sends), and the job is tried
    again later. No delivery is sent once attempts and such sends reach the limit."""


ScheduleRetry = Callable[[asyncpg.Connection, datetime], Awaitable[None]]
"""Defers the follow-up job of a range on the given connection (in its transaction), due
at the given instant, or brings the one already waiting forward to it."""


@dataclass
class ChunkReport:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retrying: int = 0
    """Deliveries left pending by a transient failure, for a follow-up job."""
    comes_back_in: float | None = None
    """The chunk ended early to wait (rate limit, paused provider): its follow-up job
    comes back after this many seconds."""
    waiting: int = 0
    """Deliveries held back by their recipients' quiet hours, for a follow-up job."""


@dataclass
class Window:
    """One window's work so far: what it claimed, and once every send has been answered,
    the outcomes it is about to record."""

    run_id: UUID
    first: int
    last: int
    exclude: list[int]
    limit: int
    """Deliveries it may claim: WORKER_CONCURRENCY, or fewer under a rate limit."""
    provider: str
    outcomes: list[Outcome] | None = None
    paused_for: float | None = None
    """Set instead of sending when the provider is paused (it answered 429 earlier)."""
    waiting: int = 0
    """Claimed deliveries that wait for the end of their recipients' quiet hours."""
    unrecorded: dict[int, tuple[int, str]] = field(default_factory=dict)
    """Position -> (sends no window recorded, why): the chunk's, shared by its windows."""
    sent: list[int] = field(default_factory=list)
    """Positions it sent to the provider (claimed, not suppressed, below the limit)."""
    unstored: list[int] = field(default_factory=list)
    """Positions whose outcome it could not store at all (salvage): sent ones, and ones
    given up without a send."""


def backoff_seconds(attempts: int, base: float) -> float:
    """Exponential in the attempts made so far, with +-50% jitter so that retries of a
    failing provider do not arrive in lockstep."""
    return float(min(MAX_BACKOFF_SECONDS, base * 2 ** (attempts - 1)) * random.uniform(0.5, 1.5))


def render(template: str | None, person_id: str, recipient: str) -> str | None:
    """The campaign text for one recipient: {{person_id}} and {{recipient}} are replaced."""
    if template is None:
        return None
    return template.replace("{{person_id}}", person_id).replace("{{recipient}}", recipient)


async def deliver_chunk(
    resources: WorkerResources,
    run_id: UUID,
    first: int,
    last: int,
    schedule_retry: ScheduleRetry,
    newcomer_waiting: Callable[[], Awaitable[bool]] | None = None,
) -> ChunkReport:
    """Raises DeliveryInterrupted when the worker stops before the chunk is done, and the
    error of a window that failed (the database away; or, before any send or after a
    salvage that failed too, a bug: tasks.py bounds those).

    Every TIME_SLICE_SECONDS or so, it asks `newcomer_waiting()`; if a newly published run
    (or one of a higher priority) waits for a worker slot, the chunk ends and its follow-up
    job takes the rest: a run published behind a big one starts within a time slice, not
    when one of the big run's jobs happens to end."""
    report = ChunkReport()
    next_slice = time.monotonic() + _time_slice()
    retrying: list[int] = []  # positions left for the follow-up job
    async with resources.pool.acquire() as conn:
        target = await RunRepository(conn).delivery_target(run_id)
        unrecorded = await DeliveryRepository(conn).unrecorded_sends(run_id, first, last)
    if target is None:
        return report
    brand_id, channel = target["brand_id"], target["channel"]
    provider = resources.providers[channel].name
    while True:
        if resources.stopping.is_set():
            raise DeliveryInterrupted("worker stopping")
        if newcomer_waiting is not None and time.monotonic() >= next_slice:
            # One job of the process makes way per slice: one newcomer needs one slot.
            if resources.slices.may_yield() and await newcomer_waiting():
                resources.slices.yielded()
                report.comes_back_in = await _come_back(resources, schedule_retry, 0.0)
                break
            next_slice = time.monotonic() + _time_slice()
        limits = await resources.limiter.limits(brand_id, channel)
        share, wait = resources.config.window, 0.0
        if limits:
            share, wait = await resources.limiter.take(limits, share)
        if not share:
            report.comes_back_in = await _come_back(resources, schedule_retry, wait)
            break
        window = Window(run_id, first, last, list(retrying), share, provider, unrecorded=unrecorded)
        try:
            outcomes = await _abortable(
                resources, _window_transaction(resources, window, schedule_retry)
            )
        except DeliveryInterrupted:
            raise
        except Exception as exc:
            if not window.sent or database_away(exc):
                raise
            # Rolled back after its sends: they count, or they could repeat without bound.
            await _count_unrecorded(resources, window, window.sent, repr(exc))
            raise UnrecordedSends(f"{len(window.sent)} sends not recorded: {exc!r}") from exc
        if window.unstored:
            # Given up without a send, and not even `failed` could be stored: not again in
            # this job (nothing left to send it; the row says pending for ops to see).
            retrying += [p for p in window.unstored if p not in window.sent]
            if sent := [p for p in window.unstored if p in window.sent]:
                await _count_unrecorded(resources, window, sent, "its outcome could not be stored")
                raise UnrecordedSends(f"{len(sent)} sends whose outcome could not be stored")
        if limits:
            await resources.limiter.give_back(limits, share - len(window.sent))
        if window.paused_for is not None:
            if window.paused_for > MAX_INLINE_WAIT_SECONDS:
                report.comes_back_in = await _come_back(
                    resources, schedule_retry, window.paused_for
                )
                break
            await asyncio.sleep(window.paused_for)
            continue
        if outcomes is None:
            break
        counts = Counter(o.status for o in outcomes)
        report.sent += counts["sent"]
        report.failed += counts["failed"]
        report.skipped += counts["skipped"]
        report.retrying += counts["pending"]
        report.waiting += window.waiting
        retrying += (o.position for o in outcomes if o.status == "pending")
    return report


def _time_slice() -> float:
    """TIME_SLICE_SECONDS, +-50%: the jobs of a worker do not all ask at once."""
    return TIME_SLICE_SECONDS * random.uniform(0.5, 1.5)


async def _come_back(
    resources: WorkerResources, schedule_retry: ScheduleRetry, seconds: float
) -> float:
    """End the chunk early: its follow-up job takes the rest after `seconds`."""
    async with resources.pool.acquire() as conn, conn.transaction():
        await schedule_retry(conn, datetime.now(UTC) + timedelta(seconds=seconds))
    return seconds


async def fail_range(
    resources: WorkerResources, run_id: UUID, first: int, last: int, why: str
) -> int:
    """The last resort of a job that keeps failing for a reason other than the database
    being away: its pending deliveries fail with `why`, and the run can complete."""
    async with resources.pool.acquire() as conn, delivery_window(conn, run_id):
        runs = RunRepository(conn)
        run = await runs.enter_delivery_window(run_id)
        if run is None or run["status"] in ENDED:
            return 0
        failed = await DeliveryRepository(conn).fail_pending(run_id, first, last, why)
        await runs.count_outcomes(run_id, 0, failed, 0)
        return failed


async def _abortable(resources: WorkerResources, window: Coroutine[Any, Any, T]) -> T:
    """Run a window, unless the worker aborts first: then its transaction rolls back."""
    task = asyncio.ensure_future(window)
    abort = asyncio.ensure_future(resources.aborting.wait())
    try:
        await asyncio.wait({task, abort}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()  # the job itself was cancelled: take the window down with it
        raise
    finally:
        abort.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise DeliveryInterrupted("worker aborting")
    return task.result()


async def _window_transaction(
    resources: WorkerResources, window: Window, schedule_retry: ScheduleRetry
) -> list[Outcome] | None:
    async with resources.pool.acquire() as conn, delivery_window(conn, window.run_id):
        return await _deliver_window(conn, resources, window, schedule_retry)


async def _deliver_window(
    conn: asyncpg.Connection,
    resources: WorkerResources,
    window: Window,
    schedule_retry: ScheduleRetry,
) -> list[Outcome] | None:
    """One window in the caller's transaction; None when the chunk has nothing left."""
    run_id = window.run_id
    runs = RunRepository(conn)
    run = await runs.enter_delivery_window(run_id, window.provider, resources.clock_offset)
    if run is None or run["status"] in ENDED:
        return None
    if run["paused_for"] is not None:
        window.paused_for = float(run["paused_for"])
        return None
    claimed = await DeliveryRepository(conn).claim(
        run_id,
        window.first,
        window.last,
        limit=window.limit,
        exclude=window.exclude,
        now=run["now"],
    )
    if not claimed:
        # Nothing left here; if nothing is left anywhere (e.g. every recipient was skipped
        # at publish), this completes the run.
        await runs.count_outcomes(run_id, 0, 0, 0)
        await _follow_up_the_waiting(conn, resources, window, run["now"], schedule_retry)
        return None
    waiting, wake_at = await _hold_quiet(conn, run_id, run, claimed)
    window.waiting = len(waiting)
    claimed = [row for row in claimed if row["position"] not in waiting]
    channel = run["channel"]
    suppressed = set()
    if run["suppressions"]:
        suppressed = await SuppressionRepository(conn).listed_among(
            run["brand_id"], [normalise(channel, row["recipient"]) for row in claimed]
        )
    provider = resources.providers[channel]
    outcomes: list[Outcome] = []
    to_send = []
    for row in claimed:
        position = row["position"]
        unrecorded, why = window.unrecorded.get(position, (0, ""))
        tried = row["attempts"] + unrecorded  # sends so far, recorded or not
        if normalise(channel, row["recipient"]) in suppressed:
            outcomes.append(Outcome(position, "skipped", tried, reason="suppressed"))
        elif tried >= resources.config.max_attempts:
            detail = f"gave up after {tried} attempts ({unrecorded} not recorded); last: {why}"
            outcomes.append(Outcome(position, "failed", tried, last_error=detail))
        else:
            to_send.append((row, tried))
    window.sent = [row["position"] for row, _ in to_send]
    outcomes += await asyncio.gather(
        *(_send(provider, resources, run_id, run, row, tried) for row, tried in to_send)
    )
    window.outcomes = outcomes
    try:
        async with savepoint(conn, release=False):  # what fails here spoils nothing else
            await _commit_outcomes(conn, resources, window, run, wake_at, schedule_retry)
    except Exception as exc:
        if database_away(exc):
            raise  # the window rolls back and goes again: no attempt is spent
        outcomes = await _salvage(conn, resources, window, run, exc, schedule_retry)
    # Counted before the commit: a window that then rolls back is counted, as its sends
    # did reach the provider.
    count_outcomes(channel, provider.name, Counter(o.status for o in outcomes).items())
    return outcomes


async def _commit_outcomes(
    conn: asyncpg.Connection,
    resources: WorkerResources,
    window: Window,
    run: asyncpg.Record,
    wake_at: datetime | None,
    schedule_retry: ScheduleRetry,
) -> None:
    """The window's outcomes, the run's counters, the provider's pause if it asked for
    one, and the follow-up job its pending deliveries need, when the first of them is
    due (quiet hours' end, backoff, pause)."""
    assert window.outcomes is not None
    outcomes = window.outcomes
    await _record(conn, window, outcomes, run["now"])
    if throttled := [o for o in outcomes if o.throttled_for is not None]:
        until = max(o.throttled_for or 0.0 for o in throttled)
        reason = throttled[0].last_error or "throttled"
        await RateLimitRepository(conn).pause(window.provider, until, reason)
    follow_up = [wake_at - resources.clock_offset] if wake_at else []  # in the real clock
    retry_in = [o.retry_in for o in outcomes if o.status == "pending" and o.retry_in is not None]
    if retry_in:
        follow_up.append(datetime.now(UTC) + timedelta(seconds=min(retry_in)))
    if follow_up:
        await schedule_retry(conn, min(follow_up))


async def _hold_quiet(
    conn: asyncpg.Connection, run_id: UUID, run: asyncpg.Record, claimed: list[asyncpg.Record]
) -> tuple[set[int], datetime | None]:
    """The claimed deliveries whose recipients are inside the campaign's quiet hours at
    the window's `now`, now pending with `not_before` = the end of their window (no
    attempt spent), and the earliest of those ends."""
    quiet = QuietWindow.of(run["quiet_hours"])
    if quiet is None:
        return set(), None
    now: datetime = run["now"]
    ends: dict[str | None, datetime | None] = {}  # per zone: a window shares a few
    waiting: dict[int, datetime] = {}
    for row in claimed:
        zone = row["time_zone"]
        if zone not in ends:
            ends[zone] = quiet.quiet_until(now, zone)
        if (end := ends[zone]) is not None:
            waiting[row["position"]] = end
    if waiting:
        await DeliveryRepository(conn).wait_until(run_id, waiting)
    return set(waiting), min(waiting.values(), default=None)


async def _follow_up_the_waiting(
    conn: asyncpg.Connection,
    resources: WorkerResources,
    window: Window,
    now: datetime,
    schedule_retry: ScheduleRetry,
) -> None:
    """At the end of a job: while deliveries of its range wait (`not_before`: quiet hours,
    a backoff, a provider's pause), a follow-up job is due when the first of them may go.
    The window that made them wait deferred one; but a follow-up brought forward since
    (a yield, an earlier wake-up) may be this very job, which is ending."""
    wake_at = await DeliveryRepository(conn).next_not_before(
        window.run_id, window.first, window.last, now
    )
    if wake_at is not None:
        await schedule_retry(conn, wake_at - resources.clock_offset)


async def _record(
    conn: asyncpg.Connection, window: Window, outcomes: list[Outcome], now: datetime
) -> None:
    """The outcomes and the run's counters, in the caller's transaction."""
    await _store(conn, window, outcomes, now)
    counts = Counter(o.status for o in outcomes)
    await RunRepository(conn).count_outcomes(
        window.run_id, counts["sent"], counts["failed"], counts["skipped"]
    )


async def _store(
    conn: asyncpg.Connection, window: Window, outcomes: list[Outcome], now: datetime
) -> None:
    """The outcomes, whose attempts count the sends no window recorded: those are
    forgotten with them. (The chunk's copy keeps them: a delivery recorded once is not
    claimed again by the same job.)"""
    deliveries = DeliveryRepository(conn)
    await deliveries.record(window.run_id, outcomes, now)
    if folded := [o.position for o in outcomes if o.position in window.unrecorded]:
        await deliveries.forget_unrecorded_sends(window.run_id, folded)


async def _count_unrecorded(
    resources: WorkerResources, window: Window, positions: list[int], why: str
) -> None:
    """One more unrecorded send of each of `positions`, in a transaction of its own. If
    that fails too, the error goes up: the job's own count of failures bounds it."""
    async with resources.pool.acquire() as conn:
        await DeliveryRepository(conn).count_unrecorded_sends(window.run_id, positions, why)
    for position in positions:
        sends, _ = window.unrecorded.get(position, (0, why))
        window.unrecorded[position] = (sends + 1, why)
    logger.error(
        "sends whose outcome could not be recorded are counted",
        extra={"positions": positions, "reason": why},
    )


async def _salvage(
    conn: asyncpg.Connection,
    resources: WorkerResources,
    window: Window,
    run: asyncpg.Record,
    error: Exception,
    schedule_retry: ScheduleRetry,
) -> list[Outcome]:
    """Record a window whose sends were answered but whose outcomes could not be, for a
    reason that would fail again, in the window's own transaction: its deliveries are still
    locked, no other job can take them meanwhile. Each delivery goes in its own savepoint,
    so that one that cannot be stored holds back no other: its outcome without the
    provider's answer, else `failed`. The attempt is spent either way. What could not even
    be failed stays pending (`window.unstored`): a send of it is counted apart after the
    commit (deliver_chunk), so the limit of attempts holds for it too."""
    assert window.outcomes is not None
    logger.error(
        "a window could not be recorded after its sends; recording it without the "
        "provider's answers",
        exc_info=error,
    )
    lost = f"its outcome could not be stored ({type(error).__name__}); the answer is lost"
    run_id, now = window.run_id, run["now"]
    recorded: list[Outcome] = []
    for outcome in window.outcomes:
        candidates = _without_answer(outcome, lost)
        if stored := await _store_first_possible(conn, window, candidates, now):
            recorded.append(stored)
        else:
            window.unstored.append(outcome.position)
    counts = Counter(o.status for o in recorded)
    await RunRepository(conn).count_outcomes(
        run_id, counts["sent"], counts["failed"], counts["skipped"]
    )
    if any(o.status == "pending" for o in recorded):
        retry_at = datetime.now(UTC) + timedelta(seconds=resources.config.retry_base_seconds)
        if not await _in_savepoint(conn, partial(schedule_retry, conn, retry_at)):
            # No follow-up job can be made: fail them rather than leave them to no one.
            unscheduled = [
                replace(o, status="failed", last_error=lost)
                for o in recorded
                if o.status == "pending"
            ]
            await _record(conn, window, unscheduled, now)
            recorded = [o for o in recorded if o.status != "pending"] + unscheduled
    return recorded


async def _store_first_possible(
    conn: asyncpg.Connection, window: Window, candidates: tuple[Outcome, ...], now: datetime
) -> Outcome | None:
    for candidate in candidates:
        if await _in_savepoint(conn, partial(_store, conn, window, [candidate], now)):
            return candidate
    return None


async def _in_savepoint(
    conn: asyncpg.Connection, statement: Callable[[], Awaitable[object]]
) -> bool:
    """Whether `statement` succeeded; if it failed for a reason other than the database
    being away, only its savepoint rolled back."""
    try:
        async with savepoint(conn):
            await statement()
    except Exception as exc:
        if database_away(exc):
            raise
        logger.error("a salvage step failed", exc_info=exc)
        return False
    return True


def _without_answer(outcome: Outcome, lost: str) -> tuple[Outcome, Outcome]:
    """What to store of an outcome whose details could not be: first the same status
    without the provider's words, then `failed`."""
    plain = replace(
        outcome,
        provider_message_id=None,
        last_error=None if outcome.status in ("sent", "skipped") else lost,
    )
    return plain, replace(outcome, status="failed", reason=None, last_error=lost)


async def _send(
    provider: Provider,
    resources: WorkerResources,
    run_id: UUID,
    run: asyncpg.Record,
    row: asyncpg.Record,
    tried: int,
) -> Outcome:
    """Never raises (but for cancellation): a raise would leave the window's other sends
    running unseen while the window rolls back. `tried`: the delivery's sends before this
    one, recorded or not."""
    position, person_id, recipient = row["position"], row["person_id"], row["recipient"]
    attempts = tried + 1
    latency = provider_latency(run["channel"], provider.name)
    try:
        message = OutgoingMessage(
            delivery_id=delivery_id(run_id, position),
            run_id=str(run_id),
            campaign_id=str(run["campaign_id"]),
            brand_id=run["brand_id"],
            channel=run["channel"],
            person_id=person_id,
            recipient=recipient,
            sender=run["sender"],
            subject=render(run["subject"], person_id, recipient),
            body=render(run["body"], person_id, recipient) or "",
        )
        async with resources.sends:
            started = time.perf_counter()
            try:
                with tracing.send_span(provider.name, message.delivery_id, message.channel):
                    result = await provider.send(message)
            finally:
                latency.observe(time.perf_counter() - started)
    except PermanentError as exc:
        return Outcome(position, "failed", attempts, last_error=exc.detail)
    except Throttled as exc:  # not an attempt: the provider asked us to wait
        return Outcome(
            position,
            "pending",
            tried,
            last_error=exc.detail,
            throttled_for=exc.retry_after_seconds,
            retry_in=exc.retry_after_seconds,
        )
    except Exception as exc:
        # TransientError, or a bug (a provider's or ours): either way the window's other
        # outcomes must still commit (else their sends would be repeated), and another
        # attempt may do.
        if not isinstance(exc, TransientError):
            logger.exception("sending raised", extra={"delivery_id": delivery_id(run_id, position)})
        detail = exc.detail if isinstance(exc, TransientError) else f"unexpected: {exc!r}"
        if attempts >= resources.config.max_attempts:
            detail = f"gave up after {attempts} attempts; last: {detail}"
            return Outcome(position, "failed", attempts, last_error=detail)
        backoff = backoff_seconds(attempts, resources.config.retry_base_seconds)
        return Outcome(position, "pending", attempts, last_error=detail, retry_in=backoff)
    return Outcome(position, "sent", attempts, provider_message_id=result.provider_message_id)
