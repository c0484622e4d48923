"""What a worker process shares between the jobs it runs."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

import asyncpg

from app.core.unsubscribe import UnsubscribeKeys
from db.deliveries import DeliveryRepository
from jobs.limits import Limiter
from jobs.providers import Provider


@dataclass(frozen=True)
class DeliveryConfig:
    max_attempts: int
    """DELIVERY_MAX_ATTEMPTS: a transient failure on the last attempt fails the delivery."""
    window: int
    """Deliveries claimed, sent and recorded together (WORKER_CONCURRENCY)."""
    retry_base_seconds: float
    max_throttles: int = 10
    """DELIVERY_MAX_THROTTLES: the throttled answer that reaches it fails the delivery."""
    lease_seconds: float = 30.0
    """How long a window's claim lasts unless the worker renews it (STALLED_JOB_SECONDS:
    a dead worker's deliveries come back when its jobs do)."""
    unsubscribe: UnsubscribeKeys | None = None
    """What makes the unsubscribe links of campaigns with a topic (UNSUBSCRIBE_SECRETS,
    PUBLIC_BASE_URL); None: such e-mail fails unsent."""


@dataclass
class Lease:
    """One window's claim: its deliveries are this worker's until `expires` (monotonic
    seconds), pushed back each time the heartbeat renews it in the database."""

    run_id: UUID
    token: UUID
    positions: list[int]
    expires: float


@dataclass
class Leases:
    """The claims of the windows in flight in this process, renewed with the heartbeat
    (jobs/worker.py): a window may send for as long as its worker lives, however long
    its sends queue for connections."""

    seconds: float
    held: dict[UUID, Lease] = field(default_factory=dict)

    def take(self, run_id: UUID, token: UUID, positions: list[int], since: float) -> Lease:
        """`since`: time.monotonic() before the claim (the database's now() is later)."""
        lease = Lease(run_id, token, positions, since + self.seconds)
        self.held[token] = lease
        return lease

    def drop(self, lease: Lease) -> None:
        self.held.pop(lease.token, None)

    async def renew(self, pool: asyncpg.Pool, leases: list[Lease] | None = None) -> None:
        """Renew `leases` (by default every one held), each only if all of its deliveries
        are still its own: a heartbeat late on a starved loop may come after a claim lapsed
        and another window took some of them; that lease stays lapsed, and its window
        sends no more."""
        leases = list(self.held.values()) if leases is None else leases
        if not leases:
            return
        since = time.monotonic()
        async with pool.acquire() as conn:
            held = await DeliveryRepository(conn).renew(
                [(lease.run_id, lease.token, lease.positions) for lease in leases], self.seconds
            )
        for lease in leases:
            if held[lease.token] == len(lease.positions):
                lease.expires = since + self.seconds

    async def renew_if_lapsing(self, pool: asyncpg.Pool, lease: Lease) -> None:
        """Renew `lease` now if less than a third of it is left (the heartbeat renews it
        that often): renders that held the event loop past a heartbeat, on a starved CPU,
        would else find it lapsed at every send, window after window."""
        if time.monotonic() >= lease.expires - self.seconds / 3:
            await self.renew(pool, [lease])


TIME_SLICE_SECONDS = 0.5
"""How long a job delivers before it checks whether a newcomer waits for its slot."""


@dataclass
class TimeSlices:
    """When a job of this process last gave its slot up to a newcomer (jobs/delivery.py):
    the process's other jobs do not give theirs up for the same newcomer."""

    slice_seconds: float
    last_yield: float = float("-inf")

    def may_yield(self) -> bool:
        return time.monotonic() - self.last_yield >= self.slice_seconds

    def yielded(self) -> None:
        self.last_yield = time.monotonic()


THROTTLING_SECONDS = 1.0
"""How far back a process looks at a provider's answers to judge its throttling."""
WIDESPREAD_THROTTLES = 3
"""Throttled answers in that time, and half of all, that show a provider throttling as a
whole rather than a few addresses."""


@dataclass
class Answers:
    """A provider's recent answers to this process: whether its throttling is widespread
    (the provider as a whole asks to slow down: pause it for every worker) or of a few
    addresses (an SMS gateway throttles per number: only those deliveries wait)."""

    seen: dict[str, deque[tuple[float, bool]]] = field(default_factory=dict)

    def add(self, provider: str, throttled: bool) -> None:
        self.seen.setdefault(provider, deque()).append((time.monotonic(), throttled))

    def widespread(self, provider: str) -> bool:
        seen = self.seen.get(provider)
        if not seen:
            return False
        while seen and seen[0][0] < time.monotonic() - THROTTLING_SECONDS:
            seen.popleft()
        throttled = sum(1 for _, was_throttled in seen if was_throttled)
        return throttled >= WIDESPREAD_THROTTLES and 2 * throttled >= len(seen)


@dataclass(frozen=True)
class WorkerResources:
    pool: asyncpg.Pool
    providers: Mapping[str, Provider]
    sends: asyncio.Semaphore
    """Bounds the sends in flight across all jobs of the process (WORKER_CONCURRENCY)."""
    config: DeliveryConfig
    stopping: asyncio.Event
    """First SIGTERM: finish the windows in flight, then hand the jobs back to the queue."""
    aborting: asyncio.Event
    """Second SIGTERM: roll back the windows in flight now and hand the jobs back."""
    limiter: Limiter
    """The rate limits every worker process respects together."""
    slices: TimeSlices = field(default_factory=lambda: TimeSlices(TIME_SLICE_SECONDS))
    leases: Leases = field(default_factory=lambda: Leases(30.0))
    answers: Answers = field(default_factory=Answers)
    clock_offset: timedelta = timedelta(0)
    """Added to the database's now() wherever delivery decides what is due and what time
    it is for a recipient (quiet hours). Zero but in tests, which move the clock."""
