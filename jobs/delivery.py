"""deliver_chunk: send the pending deliveries of one job's range, window by window, with no
transaction open while a provider is called.

A window
1. claims up to `window` due deliveries in one statement (`DeliveryRepository.claim`, its
   own transaction): each gets the window's claim token, a lease (`claimed_until`) and one
   more attempt counted, before any send; nothing is claimed once the run has ended, nor
   while the provider is paused;
2. holds back those inside their recipient's quiet hours, skips the suppressed (looked up
   for exactly those addresses), gives up, without a send, those whose attempts are
   spent already (sends counted by earlier claims whose outcome was never recorded), and
   renders each other's message from its recipient's data: one that cannot be rendered is
   `failed` (`render_failed`), never sent, its attempt given back (ADR 0061);
3. sends the rest, at most `worker_concurrency` at once in the process, holding no
   transaction and no connection;
4. records the outcomes in one short transaction that writes only the rows still claimed
   by it, the run's counters from the rows it wrote, the provider's pause if its
   throttling is widespread, and the follow-up job its pending deliveries need.

Counted at the claim, no send escapes DELIVERY_MAX_ATTEMPTS, whatever fails after it. A
worker killed mid-window leaves its deliveries claimed until their lease ends: the
heartbeat renews the claims of its windows in flight, so that happens STALLED_JOB_SECONDS
after the worker died, when its jobs come back too. Only those deliveries (sends in flight
or answered but not recorded) can reach the provider twice, with the same delivery id as
idempotency key, and their second send is an attempt of its own.

A transient failure leaves the delivery pending with `not_before` after its backoff, and a
follow-up job for the range due then (`schedule_retry`, in the record's transaction); a
throttled answer (429) does the same without spending an attempt, at most
DELIVERY_MAX_THROTTLES times. A delivery held back by quiet hours stays pending with
`not_before` = the end of its recipient's window. The last window of every job (the one
that claims nothing) makes sure a job of its range is due when the first of its pending
deliveries may go (`_finish`): nothing pending is ever left without a job. Every due time
comes from the database's clock, which is the one procrastinate compares them with.

A record that fails for a reason other than the database being away (a bug of ours, a
constraint, text the database refuses) is salvaged delivery by delivery (jobs/recording.py); the
database away, it is tried again while the window's claim lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import asyncpg

from app.core import tracing
from app.core.unsubscribe import UnsubscribeLink, unsubscribe_link
from app.domain.recipients import normalise
from app.domain.schedule import QuietWindow
from app.domain.templates import CampaignTemplates, RenderFailed, TemplateError, body_limit
from db.deliveries import Claimed, DeliveryRepository, Outcome, delivery_id
from db.jobs import JobRepository
from db.runs import ENDED, RunRepository
from db.suppressions import SuppressionRepository
from jobs.limits import MAX_INLINE_WAIT_SECONDS
from jobs.metrics import count_outcomes, provider_latency
from jobs.providers import OptedOut, OutgoingMessage, PermanentError, Throttled, TransientError
from jobs.recording import record_window
from jobs.resources import TIME_SLICE_SECONDS, DeliveryConfig, Lease, WorkerResources
from jobs.window import MIN_THROTTLE_SECONDS, ScheduleRetry, Window

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_SECONDS = 300.0
MAX_THROTTLE_SECONDS = 3600.0
ABORT_RELEASE_SECONDS = 1.0
"""An aborting worker gives its claims back for at most this long (else they lapse)."""


class DeliveryInterrupted(Exception):
    """The worker is stopping; the job goes back to the queue with its rest pending."""


class OutcomesNotStored(Exception):
    """Some outcomes could not be stored at all, not even as `failed` (the database refuses
    those rows): the job fails this try and procrastinate tries it again; the sends were
    counted at their claims, so none of those deliveries is sent past its attempts, and
    tasks.py ends the job after DELIVERY_MAX_ATTEMPTS such tries."""


@dataclass
class ChunkReport:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retrying: int = 0
    """Deliveries left pending by a transient failure or a throttle, for a follow-up job."""
    comes_back_in: float | None = None
    """The chunk ended early to wait (rate limit, paused provider): its follow-up job
    comes back after this many seconds."""
    waiting: int = 0
    """Deliveries held back by their recipients' quiet hours, for a follow-up job."""


def backoff_seconds(attempts: int, base: float) -> float:
    """Exponential in the attempts made so far, with +-50% jitter so that retries of a
    failing provider do not arrive in lockstep."""
    return float(min(MAX_BACKOFF_SECONDS, base * 2 ** (attempts - 1)) * random.uniform(0.5, 1.5))


RENDER_SLICE_SECONDS = 0.05
"""A window's renders let the event loop run (heartbeat, other jobs) at least this often."""
RENDER_FAILED = "render_failed"
"""Failure reason of a delivery whose message could not be rendered: never sent."""


async def deliver_chunk(
    resources: WorkerResources,
    run_id: UUID,
    first: int,
    last: int,
    schedule_retry: ScheduleRetry,
    newcomer_waiting: Callable[[], Awaitable[bool]] | None = None,
) -> ChunkReport:
    """Raises DeliveryInterrupted when the worker stops before the chunk is done,
    OutcomesNotStored after it when some outcome could not be stored at all, and the error
    of a window that failed otherwise (the database away; a bug: tasks.py bounds those).

    Every TIME_SLICE_SECONDS or so, it asks `newcomer_waiting()`; if a newly published run
    (or one of a higher priority) waits for a worker slot, the chunk ends and its follow-up
    job takes the rest: a run published behind a big one starts within a time slice, not
    when one of the big run's jobs happens to end."""
    report = ChunkReport()
    next_slice = time.monotonic() + _time_slice()
    retrying: list[int] = []  # positions left for the follow-up job
    unstored: list[int] = []
    async with resources.pool.acquire() as conn:
        target = await RunRepository(conn).delivery_target(run_id)
    if target is None:
        return report
    brand_id, channel = target["brand_id"], target["channel"]
    provider = resources.providers[channel]
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
        window = Window(run_id, first, last, retrying + unstored, share, target, provider)
        await _abortable(resources, _deliver_window(resources, window, schedule_retry))
        unstored += window.unstored
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
        if window.run_ended:
            break
        if not window.claimed or not window.claimed.rows:
            if unstored:
                # This job's own retry takes them (tasks.py bounds its tries): no
                # follow-up of its range may loop on them.
                raise OutcomesNotStored(f"{len(unstored)} outcomes could not be stored")
            await _finish(resources, window, schedule_retry)
            break
        counts = Counter(o.status for o in window.outcomes if o.position not in window.unstored)
        report.sent += counts["sent"]
        report.failed += counts["failed"]
        report.skipped += counts["skipped"]
        report.retrying += counts["pending"] - window.waiting
        report.waiting += window.waiting
        retrying += (
            o.position for o in window.outcomes if o.status == "pending" and o.not_before is None
        )
    return report


def _time_slice() -> float:
    """TIME_SLICE_SECONDS, +-50%: the jobs of a worker do not all ask at once."""
    return TIME_SLICE_SECONDS * random.uniform(0.5, 1.5)


async def _come_back(
    resources: WorkerResources, schedule_retry: ScheduleRetry, seconds: float
) -> float:
    """End the chunk early: its follow-up job takes the rest `seconds` from now, by the
    database's clock (a worker's own clock may be off by minutes)."""
    async with resources.pool.acquire() as conn, conn.transaction():
        await schedule_retry(conn, await JobRepository(conn).now_plus(seconds))
    return seconds


async def _finish(
    resources: WorkerResources, window: Window, schedule_retry: ScheduleRetry
) -> None:
    """The job's last window claimed nothing. If nothing is pending any more (e.g. every
    recipient was skipped at publish), this completes the run. Whatever is still pending
    in the range (waiting for its `not_before`, claimed by another window, or due but
    locked by another transaction when the claim passed) gets a follow-up job due when
    the first of it may go: a job brought forward since (a yield, an earlier wake-up) may
    be this very one, which is ending."""
    async with resources.pool.acquire() as conn, conn.transaction():
        await RunRepository(conn).count_outcomes(window.run_id, 0, 0, 0)
        wake_at = await DeliveryRepository(conn).next_due(
            window.run_id, window.first, window.last, resources.clock_offset
        )
        if wake_at is not None:
            await schedule_retry(conn, wake_at)


async def fail_range(
    resources: WorkerResources, run_id: UUID, first: int, last: int, why: str
) -> int:
    """The last resort of a job that keeps failing for a reason other than the database
    being away: its pending deliveries fail with `why`, and the run can complete."""
    async with resources.pool.acquire() as conn, conn.transaction():
        runs = RunRepository(conn)
        status = await runs.lock(run_id)
        if status is None or status in ENDED:
            return 0
        failed = await DeliveryRepository(conn).fail_pending(run_id, first, last, why)
        await runs.count_outcomes(run_id, 0, failed, 0)
        return failed


async def _abortable(resources: WorkerResources, window: Coroutine[Any, Any, T]) -> T:
    """Run a window, unless the worker aborts first: then its sends are cancelled and its
    claims given back."""
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


async def _deliver_window(
    resources: WorkerResources, window: Window, schedule_retry: ScheduleRetry
) -> None:
    since = time.monotonic()
    async with resources.pool.acquire() as conn:
        window.claimed = claimed = await DeliveryRepository(conn).claim(
            window.run_id,
            window.first,
            window.last,
            limit=window.limit,
            exclude=window.exclude,
            token=window.token,
            lease_seconds=resources.config.lease_seconds,
            provider=window.provider.name,
            max_attempts=resources.config.max_attempts,
            clock_offset=resources.clock_offset,
        )
        if not claimed.rows:
            return
        lease = resources.leases.take(
            window.run_id, window.token, [row["position"] for row in claimed.rows], since
        )
        try:
            suppressed = await _suppressed(conn, window, claimed)
        except BaseException:
            resources.leases.drop(lease)
            raise
    try:
        await _send_and_record(resources, window, lease, suppressed, schedule_retry)
    finally:
        resources.leases.drop(lease)


async def _suppressed(conn: asyncpg.Connection, window: Window, claimed: Claimed) -> set[str]:
    """The claimed addresses suppressed now, brand-wide or for the campaign's topic (most
    brands have no suppression: then no look-up)."""
    if not claimed.suppressions:
        return set()
    channel = window.target["channel"]
    return await SuppressionRepository(conn).listed_among(
        window.target["brand_id"],
        [normalise(channel, row["recipient"]) for row in claimed.rows],
        window.target["topic"],
    )


async def _send_and_record(
    resources: WorkerResources,
    window: Window,
    lease: Lease,
    suppressed: set[str],
    schedule_retry: ScheduleRetry,
) -> None:
    assert window.claimed is not None and window.claimed.now is not None
    channel = window.target["channel"]
    quiet = QuietWindow.of(window.target["quiet_hours"])
    now = window.claimed.now
    templates = _templates(window.target)
    ends: dict[str | None, datetime | None] = {}  # per zone: a window shares a few
    outcomes: list[Outcome] = []
    to_send: list[tuple[asyncpg.Record, OutgoingMessage]] = []
    # Renders are bounded, not short (a second or two at worst). A window that rendered
    # for a third of its claim sends what it has (one message at least) and gives the
    # rest back, with no attempt: else every send could find the claim lapsed, and the
    # next window do the same.
    render_until = lease.expires - 2 * resources.config.lease_seconds / 3
    yield_at = time.monotonic() + RENDER_SLICE_SECONDS
    for row in window.claimed.rows:
        position, tried, throttles = row["position"], row["tried"], row["throttles"]
        if to_send and time.monotonic() >= render_until:
            outcomes.append(Outcome(position, "pending", tried, throttles, retry_in=0.0))
            continue
        if time.monotonic() >= yield_at:  # the heartbeat renews claims meanwhile
            await asyncio.sleep(0)
            yield_at = time.monotonic() + RENDER_SLICE_SECONDS
        zone = row["time_zone"]
        if quiet is not None and zone not in ends:
            ends[zone] = quiet.quiet_until(now, zone)
        if (end := ends.get(zone)) is not None:
            # Inside its recipient's quiet hours: no send, no attempt, until the end.
            outcomes.append(Outcome(position, "pending", tried, throttles, not_before=end))
            window.waiting += 1
        elif normalise(channel, row["recipient"]) in suppressed:
            outcomes.append(Outcome(position, "skipped", tried, throttles, reason="suppressed"))
        elif tried >= resources.config.max_attempts:
            detail = f"gave up after {tried} attempts; the last one's answer was never recorded"
            outcomes.append(Outcome(position, "failed", tried, throttles, last_error=detail))
        else:
            try:
                to_send.append((row, _message(resources.config, window, row, templates)))
            except RenderFailed as exc:
                # Never sent, and the attempt its claim counted is given back.
                why = str(exc)
                outcomes.append(
                    Outcome(position, "failed", tried, throttles, RENDER_FAILED, last_error=why)
                )
            except PermanentError as exc:  # subscription mail without its unsubscribe link
                why = exc.detail
                outcomes.append(Outcome(position, "failed", tried, throttles, last_error=why))
    window.sent = [row["position"] for row, _ in to_send]
    try:
        if to_send:
            await resources.leases.renew_if_lapsing(resources.pool, lease)
        outcomes += await asyncio.gather(
            *(_send(resources, window, lease, row, message) for row, message in to_send)
        )
    except asyncio.CancelledError:
        await _give_back(resources, window, [row for row, _ in to_send])
        raise
    window.outcomes = outcomes
    # Counted before the record: a send whose outcome is then lost did reach the provider.
    count_outcomes(channel, window.provider.name, Counter(o.status for o in outcomes).items())
    await record_window(resources, window, lease, schedule_retry)


async def _give_back(
    resources: WorkerResources, window: Window, to_send: list[asyncpg.Record]
) -> None:
    """The worker aborts mid-window: its claims go back at once (else they would wait for
    their lease), with the attempt of each send that never began taken back."""
    attempts = {
        row["position"]: row["tried"] + (row["position"] in window.started) for row in to_send
    }
    with contextlib.suppress(Exception):  # the database away: the claims lapse by themselves
        async with asyncio.timeout(ABORT_RELEASE_SECONDS), resources.pool.acquire() as conn:
            await DeliveryRepository(conn).release(window.run_id, window.token, attempts)


def _templates(target: asyncpg.Record) -> CampaignTemplates | str:
    """The campaign's compiled templates (cached per text: a look-up per window); for texts
    stored before they were templates that are not one, why every render of them fails."""
    try:
        return CampaignTemplates.compile(target["subject"], target["body"], target["html_body"])
    except TemplateError as exc:
        return str(exc)


def _message(
    config: DeliveryConfig, window: Window, row: asyncpg.Record, templates: CampaignTemplates | str
) -> OutgoingMessage:
    """The delivery's message, rendered for its recipient, with its unsubscribe link when
    the campaign has a topic; RenderFailed naming the variable or the bound, never a value
    of its data; PermanentError when no link can be made (`_unsubscribe_link`)."""
    if isinstance(templates, str):
        raise RenderFailed(templates)
    target = window.target
    person_id, recipient = row["person_id"], row["recipient"]
    link = _unsubscribe_link(config, window, recipient)
    rendered = templates.render(
        person_id=person_id,
        recipient=recipient,
        data=row["data"],
        campaign_name=target["name"],
        unsubscribe_url=link.url if link is not None else None,
        max_characters=body_limit(target["channel"]),
    )
    return OutgoingMessage(
        delivery_id=delivery_id(window.run_id, row["position"]),
        run_id=str(window.run_id),
        campaign_id=str(target["campaign_id"]),
        brand_id=target["brand_id"],
        channel=target["channel"],
        person_id=person_id,
        recipient=recipient,
        sender=target["sender"],
        subject=rendered.subject,
        body=rendered.body,
        html_body=rendered.html_body,
        headers=link.headers if link is not None else {},
        unsubscribe_url=link.url if link is not None else None,
    )


async def _send(
    resources: WorkerResources,
    window: Window,
    lease: Lease,
    row: asyncpg.Record,
    message: OutgoingMessage,
) -> Outcome:
    """Never raises (but for cancellation): a raise would leave the window's other sends
    running unseen. The claim counted this attempt already (`tried` + 1)."""
    provider = window.provider
    position, tried, throttles = row["position"], row["tried"], row["throttles"]
    attempts = tried + 1
    config = resources.config
    latency = provider_latency(window.target["channel"], provider.name)
    try:
        async with resources.sends:
            if time.monotonic() >= lease.expires:
                # The claim lapsed while the send queued (its renewal failed): another
                # window may hold the delivery now. Not sent, and no attempt.
                return Outcome(position, "pending", tried, throttles, retry_in=0.0)
            window.started.add(position)
            started = time.perf_counter()
            try:
                with tracing.send_span(provider.name, message.delivery_id, message.channel):
                    result = await provider.send(message)
            finally:
                latency.observe(time.perf_counter() - started)
    except PermanentError as exc:
        resources.answers.add(provider.name, throttled=False)
        opted_out = isinstance(exc, OptedOut)  # the record suppresses the address
        return Outcome(
            position, "failed", attempts, throttles, last_error=exc.detail, opted_out=opted_out
        )
    except Throttled as exc:  # not an attempt: the provider asked us to wait
        resources.answers.add(provider.name, throttled=True)
        return _throttled(exc, position, tried, throttles + 1, config)
    except Exception as exc:
        resources.answers.add(provider.name, throttled=False)
        # TransientError, or a bug (a provider's or ours): either way the window's other
        # outcomes must still be recorded, and another attempt may do.
        if not isinstance(exc, TransientError):
            logger.exception(
                "sending raised", extra={"delivery_id": delivery_id(window.run_id, position)}
            )
        detail = exc.detail if isinstance(exc, TransientError) else f"unexpected: {exc!r}"
        if attempts >= config.max_attempts:
            detail = f"gave up after {attempts} attempts; last: {detail}"
            return Outcome(position, "failed", attempts, throttles, last_error=detail)
        backoff = backoff_seconds(attempts, config.retry_base_seconds)
        return Outcome(
            position, "pending", attempts, throttles, last_error=detail, retry_in=backoff
        )
    resources.answers.add(provider.name, throttled=False)
    return Outcome(
        position, "sent", attempts, throttles, provider_message_id=result.provider_message_id
    )


def _unsubscribe_link(
    config: DeliveryConfig, window: Window, recipient: str
) -> UnsubscribeLink | None:
    """The recipient's unsubscribe link if the campaign has a topic. PermanentError when
    the worker cannot make one for an e-mail: subscription mail must not go without its
    List-Unsubscribe (an SMS goes without: its way out is the carrier's STOP)."""
    target = window.target
    if target["topic"] is None or (config.unsubscribe is None and target["channel"] != "email"):
        return None
    if config.unsubscribe is None:
        raise PermanentError(
            "not sent: a campaign with a topic needs an unsubscribe link, and this worker has"
            " no UNSUBSCRIBE_SECRETS (with PUBLIC_BASE_URL) to make one"
        )
    return unsubscribe_link(
        config.unsubscribe,
        brand_id=target["brand_id"],
        topic=target["topic"],
        channel=target["channel"],
        address=normalise(target["channel"], recipient),
        run_id=window.run_id,
    )


def _throttled(
    exc: Throttled, position: int, tried: int, throttles: int, config: DeliveryConfig
) -> Outcome:
    """A throttled answer: pending for the wait the provider asked (its own backoff when it
    did not say), from 1 s to 1 h; the one that reaches DELIVERY_MAX_THROTTLES fails it."""
    if throttles >= config.max_throttles:
        detail = f"throttled {throttles} times; last: {exc.detail}"
        return Outcome(
            position, "failed", tried, throttles, reason="throttled", last_error=detail,
            throttled_for=MIN_THROTTLE_SECONDS,
        )  # fmt: skip
    wait = exc.retry_after_seconds
    if wait is None:
        wait = backoff_seconds(throttles, config.retry_base_seconds)
    wait = min(max(wait, MIN_THROTTLE_SECONDS), MAX_THROTTLE_SECONDS)
    return Outcome(
        position, "pending", tried, throttles, last_error=exc.detail, throttled_for=wait,
        retry_in=wait,
    )  # fmt: skip
