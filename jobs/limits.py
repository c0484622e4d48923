"""How many sends a window may make under the rate limits that every worker process
respects together: EMAIL_RATE_LIMIT / SMS_RATE_LIMIT and each brand's own cap, kept as
token buckets in PostgreSQL (db/rate_limits.py).

Tokens are taken before a window's transaction and what it did not spend is given back
after it, so a worker waiting for its share holds no transaction and no row lock, and
spends no attempt. Jobs wait for tokens in place (at most a second), but never all of a
process's WORKER_JOBS on the same buckets: one more job that finds them empty ends and
leaves a follow-up job for when they will have refilled, so that a slot stays free for the
other channel's (or brand's) work.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from app.domain.schemas import MAX_PER_SECOND, MIN_PER_SECOND
from db.rate_limits import Limit, RateLimitRepository

MAX_INLINE_WAIT_SECONDS = 1.0
"""A job waits in place for tokens or for a provider's pause only this long; longer, it
ends and its follow-up job comes back then."""
BRAND_CAPS_TTL_SECONDS = 1.0
"""A brand's cap is read again after this long: a PUT takes effect within a second."""


@dataclass
class Limiter:
    """One per worker process."""

    pool: asyncpg.Pool
    channel_rates: dict[str, float | None]
    """Messages per second of each channel for the whole deployment; None: no limit."""
    burst_seconds: float
    max_waiting: int
    """Jobs of the process that may wait in place on the same buckets (WORKER_JOBS - 1)."""
    _caps: dict[str, tuple[float, asyncpg.Record | None]] = field(default_factory=dict)
    _waiting: Counter[tuple[str, ...]] = field(default_factory=Counter)

    async def limits(self, brand_id: str, channel: str) -> list[Limit]:
        """The buckets a send of this brand on this channel takes a token from."""
        limits = []
        if rate := self.channel_rates.get(channel):
            limits.append(self._bucket(f"channel {channel}", rate))
        caps = await self._brand_caps(brand_id)
        if caps is not None and (cap := caps[f"{channel}_per_second"]):
            limits.append(self._bucket(f"brand {brand_id} {channel}", cap))
        return limits

    async def take(self, limits: Sequence[Limit], want: int) -> tuple[int, float]:
        """Up to `want` tokens of every bucket: (how many, 0.0); or (0, seconds) when
        this job should end and come back after that many seconds."""
        keys = tuple(limit.key for limit in limits)
        while True:
            async with self.pool.acquire() as conn:
                granted, wait = await RateLimitRepository(conn).take(limits, want)
            if granted:
                return granted, 0.0
            if wait > MAX_INLINE_WAIT_SECONDS or self._waiting[keys] >= self.max_waiting:
                return 0, wait
            self._waiting[keys] += 1
            try:
                await asyncio.sleep(wait)
            finally:
                self._waiting[keys] -= 1

    async def give_back(self, limits: Sequence[Limit], tokens: int) -> None:
        if tokens > 0:
            async with self.pool.acquire() as conn:
                await RateLimitRepository(conn).give_back([limit.key for limit in limits], tokens)

    def _bucket(self, key: str, rate: float) -> Limit:
        # The API and the settings refuse rates outside these bounds; a cap stored before
        # they did (5e-324) is taken as the nearest bound rather than break the bucket.
        rate = min(max(rate, MIN_PER_SECOND), MAX_PER_SECOND)
        return Limit(key, rate, max(1.0, rate * self.burst_seconds))

    async def _brand_caps(self, brand_id: str) -> asyncpg.Record | None:
        read_at, caps = self._caps.get(brand_id, (0.0, None))
        if time.monotonic() - read_at > BRAND_CAPS_TTL_SECONDS:
            async with self.pool.acquire() as conn:
                caps = await RateLimitRepository(conn).brand_caps(brand_id)
            self._caps[brand_id] = (time.monotonic(), caps)
        return caps
