"""What a worker process shares between the jobs it runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg

from jobs.limits import Limiter
from jobs.providers import Provider


@dataclass(frozen=True)
class DeliveryConfig:
    max_attempts: int
    """DELIVERY_MAX_ATTEMPTS: a transient failure on the last attempt fails the delivery."""
    window: int
    """Deliveries claimed, sent and committed together (WORKER_CONCURRENCY)."""
    retry_base_seconds: float


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
    clock_offset: timedelta = timedelta(0)
    """Added to the database's now() wherever delivery decides what is due and what time
    it is for a recipient (quiet hours). Zero but in tests, which move the clock."""
