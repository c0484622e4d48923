"""Recording a window's outcomes (jobs/delivery.py sent them): one short transaction that
writes only the rows still claimed by the window, tried again while the database is away
and the claim lasts; for any other failure, salvaged delivery by delivery (ADR 0049)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

from app.domain.recipients import normalise
from db.deliveries import DeliveryRepository, Outcome
from db.pool import database_away
from db.rate_limits import RateLimitRepository
from db.receipts import ReceiptRepository
from db.runs import RunRepository
from db.suppressions import TWILIO_OPTED_OUT, SuppressionRepository
from jobs.resources import Lease, WorkerResources
from jobs.window import MIN_THROTTLE_SECONDS, ScheduleRetry, Window

logger = logging.getLogger(__name__)


async def record_window(
    resources: WorkerResources, window: Window, lease: Lease, schedule_retry: ScheduleRetry
) -> None:
    """Store the window's outcomes. The database away, try again while the claim lasts
    (what is stored is only ever what is still this window's, so a late try is harmless);
    any other failure, salvage."""
    delay = 0.05
    while True:
        try:
            await _store(resources, window, window.outcomes, schedule_retry)
            return
        except Exception as exc:
            if not database_away(exc):
                await _salvage(resources, window, exc, schedule_retry)
                return
            if resources.aborting.is_set() or time.monotonic() + delay >= lease.expires:
                raise  # its deliveries come back when the claim lapses
            logger.warning("recording a window failed; trying again: %r", exc)
        await asyncio.sleep(delay)
        delay = min(2 * delay, 1.0)


async def _store(
    resources: WorkerResources,
    window: Window,
    outcomes: list[Outcome],
    schedule_retry: ScheduleRetry,
) -> None:
    """One transaction: the outcomes of the rows still claimed by the window, the run's
    counters from the rows written, the suppressions of the recipients who opted out at the
    provider, the sends whose receipts will name them by their id, the provider's pause if
    its throttling was widespread, and a follow-up job due when the first delivery left
    pending may go."""
    run_id = window.run_id
    async with resources.pool.acquire() as conn, conn.transaction():
        recorded = await DeliveryRepository(conn).record(
            run_id, window.token, outcomes, resources.clock_offset
        )
        if recorded.change is not None:
            await RunRepository(conn).record_status_change(recorded.change)
        if opted_out := _opted_out(window, outcomes):
            await SuppressionRepository(conn).opt_out(opted_out, TWILIO_OPTED_OUT)
        if awaited := _awaiting_receipts(window, outcomes):
            await ReceiptRepository(conn).expect(run_id, awaited)
        if pause := _provider_pause(resources, window.provider.name, outcomes):
            seconds, reason = pause
            await RateLimitRepository(conn).pause(window.provider.name, seconds, reason)
        if recorded.wake_at is not None:
            await schedule_retry(conn, recorded.wake_at)


RECEIPTS_BY_MESSAGE_ID = {"twilio"}
"""Providers whose receipts name a message by the id they gave it (Twilio's sid)."""


def _awaiting_receipts(window: Window, outcomes: list[Outcome]) -> list[tuple[int, str]]:
    """(position, message id) of the window's sends whose receipts will come by that id."""
    if window.provider.name not in RECEIPTS_BY_MESSAGE_ID:
        return []
    return [
        (o.position, o.provider_message_id)
        for o in outcomes
        if o.status == "sent" and o.provider_message_id
    ]


def _opted_out(window: Window, outcomes: list[Outcome]) -> list[tuple[str, str]]:
    """(brand_id, address) of the recipients the provider said opted out: suppressed in
    the transaction that records their failure, even if the record finds a delivery no
    longer this window's (the provider's word holds either way)."""
    positions = {o.position for o in outcomes if o.opted_out}
    if not positions or window.claimed is None:
        return []
    brand_id, channel = window.target["brand_id"], window.target["channel"]
    return [
        (brand_id, normalise(channel, row["recipient"]))
        for row in window.claimed.rows
        if row["position"] in positions
    ]


def _provider_pause(
    resources: WorkerResources, provider: str, outcomes: list[Outcome]
) -> tuple[float, str] | None:
    """A pause of the provider for every worker, when its throttling is widespread: at
    least 3 of its answers to this process in the last second were throttled, and half of
    them. A few addresses throttled (an SMS gateway does that per number) pause only their
    own deliveries (`not_before`). The pause is the shortest wait asked in this window."""
    throttled = [o for o in outcomes if o.throttled_for is not None]
    if not throttled or not resources.answers.widespread(provider):
        return None
    first = min(throttled, key=lambda o: o.throttled_for or 0.0)
    return first.throttled_for or MIN_THROTTLE_SECONDS, first.last_error or "throttled"


async def _salvage(
    resources: WorkerResources, window: Window, error: Exception, schedule_retry: ScheduleRetry
) -> None:
    """Store a window whose outcomes could not be stored together, for a reason that would
    fail again, delivery by delivery in transactions of their own, so that one that cannot
    be stored holds back no other: its outcome; else without the provider's words; else
    `failed`. The attempt is spent either way (the claim counted it). What cannot even be
    failed stays pending (`window.unstored`), its claim given back, for the job's retry."""
    logger.error(
        "a window could not be recorded after its sends; recording it delivery by delivery",
        exc_info=error,
    )
    lost = f"its outcome could not be stored ({type(error).__name__}); the answer is lost"
    for outcome in window.outcomes:
        for candidate in _without_answer(outcome, lost):
            try:
                await _store(resources, window, [candidate], schedule_retry)
                break
            except Exception as exc:
                if database_away(exc):
                    raise
                logger.error("a salvage step failed", exc_info=exc)
        else:
            window.unstored.append(outcome.position)
            attempts = {outcome.position: outcome.attempts}
            with contextlib.suppress(Exception):
                async with resources.pool.acquire() as conn:
                    await DeliveryRepository(conn).release(window.run_id, window.token, attempts)


def _without_answer(outcome: Outcome, lost: str) -> tuple[Outcome, Outcome, Outcome]:
    """What to store of an outcome: itself, then the same status without the provider's
    words, then `failed`."""
    plain = replace(
        outcome,
        provider_message_id=None,
        last_error=None if outcome.status in ("sent", "skipped") else lost,
    )
    failed = replace(outcome, status="failed", reason=None, last_error=lost, not_before=None)
    return outcome, plain, failed
