"""A delivery window: what one claim took, what was sent, what is about to be recorded
(jobs/delivery.py claims and sends, jobs/recording.py records)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID, uuid4

import asyncpg

from db.deliveries import Claimed, Outcome
from db.runs import NOT_ENDED
from jobs.providers import Provider

MIN_THROTTLE_SECONDS = 1.0
"""However soon a throttling provider says to come back: at most one send a second per
delivery (the contract's "Bounded throttling")."""
ScheduleRetry = Callable[[asyncpg.Connection, datetime], Awaitable[None]]
"""Defers the follow-up job of a range on the given connection (in its transaction), due
at the given instant of the database's clock, or brings the one already waiting forward."""


@dataclass
class Window:
    """One window's work: what it claimed, sent and is about to record."""

    run_id: UUID
    first: int
    last: int
    exclude: list[int]
    limit: int
    """Deliveries it may claim: WORKER_CONCURRENCY, or fewer under a rate limit."""
    target: asyncpg.Record
    """The run's brand and campaign (RunRepository.delivery_target)."""
    provider: Provider
    token: UUID = field(default_factory=uuid4)
    claimed: Claimed | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    """Positions it sends to the provider."""
    started: set[int] = field(default_factory=set)
    """Positions whose send began: an abort gives the others back without the attempt."""
    waiting: int = 0
    """Claimed deliveries that wait for the end of their recipients' quiet hours."""
    unstored: list[int] = field(default_factory=list)
    """Positions whose outcome could not be stored at all (jobs/recording.py salvages)."""

    @property
    def paused_for(self) -> float | None:
        return None if self.claimed is None else self.claimed.paused_for

    @property
    def run_ended(self) -> bool:
        return self.claimed is None or self.claimed.status not in NOT_ENDED
