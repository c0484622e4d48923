"""SQL of the limits every worker process respects together: token buckets (channel and
brand rate limits), brands' own caps, and pauses of a provider that asked us to wait."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from db.text import storable


@dataclass(frozen=True)
class Limit:
    """A token bucket: `rate` tokens a second, at most `burst` held."""

    key: str
    rate: float
    burst: float


class RateLimitRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def take(self, limits: Sequence[Limit], want: int) -> tuple[int, float]:
        """Take up to `want` tokens from every bucket at once: as many as the emptiest
        one holds. Returns how many, and the seconds until each bucket holds one more.
        The buckets stay locked only for this short transaction, in key order."""
        keys = [limit.key for limit in limits]
        rates = [limit.rate for limit in limits]
        bursts = [limit.burst for limit in limits]
        async with self.conn.transaction():
            await self.conn.execute(
                """
                INSERT INTO rate_buckets (key, tokens, refreshed_at)
                SELECT key, burst, clock_timestamp() FROM unnest($1::text[], $2::float8[])
                    AS l(key, burst)
                ON CONFLICT (key) DO NOTHING
                """,
                keys,
                bursts,
            )
            row = await self.conn.fetchrow(
                """
                WITH l AS (
                    SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[])
                        AS l(key, rate, burst)
                ), locked AS (
                    SELECT b.key, b.tokens, b.refreshed_at FROM rate_buckets b
                    WHERE b.key = ANY($1::text[]) ORDER BY b.key FOR UPDATE
                ), current AS (
                    SELECT locked.key, l.rate, clock_timestamp() AS at,
                           least(l.burst, locked.tokens + l.rate
                                 * extract(epoch FROM clock_timestamp() - locked.refreshed_at))
                               AS tokens
                    FROM locked JOIN l USING (key)
                ), granted AS (
                    SELECT greatest(0, least($4, floor(min(tokens))))::int AS n FROM current
                ), taken AS (
                    UPDATE rate_buckets b SET tokens = c.tokens - g.n, refreshed_at = c.at
                    FROM current c, granted g WHERE b.key = c.key
                    RETURNING c.tokens - g.n AS remaining, c.rate
                )
                SELECT (SELECT n FROM granted) AS granted,
                       coalesce(max(greatest(0, 1 - remaining) / rate), 0) AS wait
                FROM taken
                """,
                keys,
                rates,
                bursts,
                want,
            )
        assert row is not None
        return int(row["granted"]), float(row["wait"])

    async def give_back(self, keys: Sequence[str], tokens: int) -> None:
        """Tokens taken but not spent (the window found fewer deliveries to send)."""
        await self.conn.execute(
            "UPDATE rate_buckets SET tokens = tokens + $2 WHERE key = ANY($1::text[])",
            list(keys),
            tokens,
        )

    async def brand_caps(self, brand_id: str, *, lock: bool = False) -> asyncpg.Record | None:
        """The brand's caps; with `lock`, row-locked until the transaction ends (a PUT
        reads what it replaces)."""
        record: asyncpg.Record | None = await self.conn.fetchrow(
            "SELECT email_per_second, sms_per_second FROM brand_rate_limits WHERE brand_id = $1"
            + (" FOR UPDATE" if lock else ""),
            brand_id,
        )
        return record

    async def set_brand_caps(
        self, brand_id: str, email_per_second: float | None, sms_per_second: float | None
    ) -> None:
        await self.conn.execute(
            """
            INSERT INTO brand_rate_limits AS b (brand_id, email_per_second, sms_per_second)
            VALUES ($1, $2, $3)
            ON CONFLICT (brand_id) DO UPDATE
                SET email_per_second = $2, sms_per_second = $3, updated_at = now()
            """,
            brand_id,
            email_per_second,
            sms_per_second,
        )

    async def pause(self, provider: str, seconds: float, reason: str) -> datetime:
        """No worker sends to `provider` for `seconds` (a later pause already set wins);
        returns until when."""
        until: datetime = await self.conn.fetchval(
            """
            INSERT INTO provider_pauses AS p (provider, until, reason)
            VALUES ($1, clock_timestamp() + make_interval(secs => $2), $3)
            ON CONFLICT (provider) DO UPDATE
                SET until = greatest(p.until, excluded.until), reason = excluded.reason
            RETURNING until
            """,
            provider,
            seconds,
            storable(reason, 1000),  # the provider's words
        )
        return until
