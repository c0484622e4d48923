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
retry it itself but returns the time at which a follow-up job should.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
from opentelemetry.trace import SpanKind

from app import tracing
from app.recipients import normalise
from db.deliveries import DeliveryRepository, Outcome, delivery_id
from db.runs import ENDED, RunRepository
from db.suppressions import SuppressionRepository
from jobs.metrics import count_outcomes, provider_latency
from jobs.providers import OutgoingMessage, PermanentError, Provider, TransientError
from jobs.resources import WorkerResources

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_SECONDS = 300.0


class DeliveryInterrupted(Exception):
    """The worker is stopping; the job goes back to the queue with its rest pending."""


@dataclass
class ChunkReport:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retry_in: float | None = None
    """Seconds after which the transient failures of this chunk should be tried again."""


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
    resources: WorkerResources, run_id: UUID, first: int, last: int
) -> ChunkReport:
    """Raises DeliveryInterrupted when the worker stops before the chunk is done."""
    report = ChunkReport()
    retry_later: dict[int, int] = {}  # position -> attempts, of transient failures
    while True:
        if resources.stopping.is_set():
            raise DeliveryInterrupted("worker stopping")
        window = await _abortable(
            resources, _window_transaction(resources, run_id, first, last, list(retry_later))
        )
        if window is None:
            break
        counts = Counter(o.status for o in window)
        report.sent += counts["sent"]
        report.failed += counts["failed"]
        report.skipped += counts["skipped"]
        retry_later.update((o.position, o.attempts) for o in window if o.status == "pending")
    if retry_later:
        report.retry_in = backoff_seconds(
            max(retry_later.values()), resources.config.retry_base_seconds
        )
    return report


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
    resources: WorkerResources, run_id: UUID, first: int, last: int, exclude: list[int]
) -> list[Outcome] | None:
    async with resources.pool.acquire() as conn, conn.transaction():
        return await _deliver_window(conn, resources, run_id, first, last, exclude)


async def _deliver_window(
    conn: asyncpg.Connection,
    resources: WorkerResources,
    run_id: UUID,
    first: int,
    last: int,
    exclude: list[int],
) -> list[Outcome] | None:
    """One window in the caller's transaction; None when the chunk has nothing left."""
    runs = RunRepository(conn)
    run = await runs.enter_delivery_window(run_id)
    if run is None or run["status"] in ENDED:
        return None
    claimed = await DeliveryRepository(conn).claim(
        run_id, first, last, limit=resources.config.window, exclude=exclude
    )
    if not claimed:
        # Nothing left here; if nothing is left anywhere (e.g. every recipient was skipped
        # at publish), this completes the run.
        await runs.count_outcomes(run_id, 0, 0, 0)
        return None
    channel = run["channel"]
    suppressed = await SuppressionRepository(conn).suppressed_among(
        run["brand_id"], [normalise(channel, row["recipient"]) for row in claimed]
    )
    provider = resources.providers[channel]
    outcomes: list[Outcome] = []
    to_send = []
    for row in claimed:
        if normalise(channel, row["recipient"]) in suppressed:
            outcomes.append(
                Outcome(row["position"], "skipped", row["attempts"], reason="suppressed")
            )
        else:
            to_send.append(row)
    outcomes += await asyncio.gather(
        *(_send(provider, resources, run_id, run, row) for row in to_send)
    )
    await DeliveryRepository(conn).record(run_id, outcomes)
    counts = Counter(o.status for o in outcomes)
    await runs.count_outcomes(run_id, counts["sent"], counts["failed"], counts["skipped"])
    # Counted before the commit: a window that then rolls back is counted, as its sends
    # did reach the provider.
    count_outcomes(channel, provider.name, counts.items())
    return outcomes


async def _send(
    provider: Provider,
    resources: WorkerResources,
    run_id: UUID,
    run: asyncpg.Record,
    row: asyncpg.Record,
) -> Outcome:
    position, person_id, recipient = row["position"], row["person_id"], row["recipient"]
    attempts = row["attempts"] + 1
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
    latency = provider_latency(message.channel, provider.name)
    try:
        async with resources.sends:
            started = time.perf_counter()
            try:
                with tracing.span(
                    f"send {provider.name}",
                    kind=SpanKind.CLIENT,
                    attributes={"delivery_id": message.delivery_id, "channel": message.channel},
                ):
                    result = await provider.send(message)
            finally:
                latency.observe(time.perf_counter() - started)
    except PermanentError as exc:
        return Outcome(position, "failed", attempts, last_error=exc.detail)
    except Exception as exc:
        # TransientError, or a provider bug: either way the window's other outcomes must
        # still commit (else their sends would be repeated), and another attempt may do.
        if not isinstance(exc, TransientError):
            logger.exception("provider raised", extra={"delivery_id": message.delivery_id})
        detail = exc.detail if isinstance(exc, TransientError) else f"unexpected: {exc!r}"
        if attempts >= resources.config.max_attempts:
            detail = f"gave up after {attempts} attempts; last: {detail}"
            return Outcome(position, "failed", attempts, last_error=detail)
        return Outcome(position, "pending", attempts, last_error=detail)
    return Outcome(position, "sent", attempts, provider_message_id=result.provider_message_id)
