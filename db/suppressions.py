"""SQL of the suppressions table."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg


class SuppressionRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def suppressed_among(self, brand_id: str, addresses: Sequence[str]) -> set[str]:
        """The normalised `addresses` that are on the brand's suppression list."""
        # Most brands have few suppressions and most publishes hit none: skip sending
        # the whole address list when the brand has none at all.
        if not await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM suppressions WHERE brand_id = $1)", brand_id
        ):
            return set()
        rows = await self.conn.fetch(
            "SELECT address FROM suppressions WHERE brand_id = $1 AND address = ANY($2::text[])",
            brand_id,
            addresses,
        )
        return {row["address"] for row in rows}

    async def add(self, brand_id: str, address: str, reason: str) -> None:
        await self.conn.execute(
            """
            INSERT INTO suppressions (brand_id, address, reason) VALUES ($1, $2, $3)
            ON CONFLICT (brand_id, address) DO UPDATE SET reason = EXCLUDED.reason
            """,
            brand_id,
            address,
            reason,
        )
