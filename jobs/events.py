"""Sending events: the send_events job POSTs a stream's pending events (a run's status
changes, a brand's new suppressions: db/events.py) to EVENTS_WEBHOOK_URL, oldest first,
signed like the webhook provider's messages.

Order: the jobs of one stream share a procrastinate lock (db.events.stream_lock), so they
run one at a time in the order they were deferred, and each sends all of the stream's
pending events oldest first, stopping at the first that fails: a later event never reaches
the receiver before an earlier one was accepted, unless that earlier one was given up for
good (`expired`, below). Delivery is at least once: an event whose answer was lost
(timeout, a worker killed mid-POST) is sent again with the same `Idempotency-Key`.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

import asyncpg
import httpx
import msgspec
from procrastinate import BaseRetryStrategy, RetryDecision
from procrastinate.jobs import Job

from app.core.settings import Settings
from app.core.signing import HEADER, signature
from db.events import EventRepository

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 3600.0


class EventNotDelivered(Exception):
    """The receiver did not accept an event: retried at `retry_at`, or given up (None).
    Its message is the failure without the receiver's words (`HTTP 422`, `ConnectError`):
    procrastinate logs it, and a receiver may quote the event (a suppression's address).
    The words are kept in the event's `last_error`."""

    def __init__(self, detail: str, retry_at: datetime | None) -> None:
        super().__init__(detail.partition(":")[0])
        self.retry_at = retry_at


class EventRetry(BaseRetryStrategy):
    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, EventNotDelivered):
            return (
                None if exception.retry_at is None else RetryDecision(retry_at=exception.retry_at)
            )
        # The database away, or a surprise: again soon, for ever; the events wait in their
        # table meanwhile, and a job that gave up would strand them.
        return RetryDecision(retry_in={"seconds": min(60, 1 + 2 * job.attempts)})


def backoff_seconds(attempts: int, base: float) -> float:
    """Exponential in the event's attempts so far, +-50% jitter, at most an hour (before
    the jitter): a receiver that is down for a day is tried about once an hour."""
    return min(MAX_BACKOFF_SECONDS, base * 2.0 ** min(attempts, 30)) * random.uniform(0.5, 1.5)


def event_body(event: asyncpg.Record) -> bytes:
    return msgspec.json.encode(
        {
            "id": event["id"],
            "type": event["type"],
            "occurred_at": event["occurred_at"],
            "data": event["data"],
        }
    )


async def send_pending_events(pool: asyncpg.Pool, settings: Settings, stream: str) -> int:
    """POST the stream's pending events, oldest first; returns how many were delivered.
    Raises EventNotDelivered at the first one the receiver does not accept (2xx), with
    when to try again by that event's own attempts and age. An event past
    EVENTS_RETRY_HOURS with a later one behind it is given up (`expired`: never sent
    after the later one), and the later one is tried at once: the expiry of one event
    never keeps the next from its own EVENTS_RETRY_HOURS."""
    async with pool.acquire() as conn:
        events = await EventRepository(conn).pending(stream)
        if events and settings.events_webhook_url is None:
            unsent = await EventRepository(conn).unsent(stream)
            logger.warning(
                "events recorded, but this worker has no EVENTS_WEBHOOK_URL: marked unsent",
                extra={"stream": stream, "events": unsent},
            )
            return 0
    if not events:
        return 0
    timeout = httpx.Timeout(TIMEOUT_SECONDS, connect=5.0)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        for index, event in enumerate(events):
            error = await _post(client, settings, event)
            async with pool.acquire() as conn:
                repository = EventRepository(conn)
                if error is None:
                    await repository.delivered(event["id"])
                    continue
                now = await repository.failed_attempt(event["id"], error)
                retry_at = _retry_at(event, now, settings)
                if retry_at is None and index < len(events) - 1:
                    await repository.expire(event["id"])
                    continue
            raise EventNotDelivered(error, retry_at)
    return len(events)


async def _post(client: httpx.AsyncClient, settings: Settings, event: asyncpg.Record) -> str | None:
    """POST one event; None if the receiver accepted it (2xx), else what went wrong."""
    assert settings.events_webhook_url is not None and settings.events_webhook_secret is not None
    body = event_body(event)
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": str(event["id"]),
        HEADER: signature(settings.events_webhook_secret, body),
    }
    try:
        response = await client.post(settings.events_webhook_url, content=body, headers=headers)
    except httpx.HTTPError as exc:  # timeouts, refused or lost connections
        return f"{type(exc).__name__}: {exc}"
    if response.is_success:
        return None
    # Redirects are not followed: they count as failures like any other answer.
    return f"HTTP {response.status_code}: {response.text[:500]}"


def _retry_at(event: asyncpg.Record, now: datetime, settings: Settings) -> datetime | None:
    """When to try the event again, by its own attempts, from `now` (the database's
    clock, which procrastinate decides by); None once it is older than
    EVENTS_RETRY_HOURS."""
    attempts = event["attempts"]  # before this one
    extra = {"event_id": str(event["id"]), "event_type": event["type"], "attempt": attempts + 1}
    if now - event["occurred_at"] >= timedelta(hours=settings.events_retry_hours):
        logger.error("gave up sending an event (EVENTS_RETRY_HOURS)", extra=extra)
        return None
    backoff = backoff_seconds(attempts, settings.events_retry_base_seconds)
    retry_at = now + timedelta(seconds=backoff)
    logger.warning(
        "event not delivered; will retry", extra={**extra, "retry_at": retry_at.isoformat()}
    )
    return retry_at
