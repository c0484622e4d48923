"""SQL of the suppressions table."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from db.params import Params

COLUMNS = "brand_id, address, reason, created_at"


class SuppressionRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def listed_among(self, brand_id: str, addresses: Sequence[str]) -> set[str]:
        """The normalised `addresses` that are on the brand's suppression list. Its callers
        learn first whether the brand has any suppression at all (a publish with its
        campaign, a delivery window with its run): most brands have none, and then the
        addresses need not be sent."""
        rows = await self.conn.fetch(
            "SELECT address FROM suppressions WHERE brand_id = $1 AND address = ANY($2::text[])",
            brand_id,
            addresses,
        )
        return {row["address"] for row in rows}

    async def put(self, brand_id: str, address: str, reason: str) -> asyncpg.Record:
        """Add the address, or change its reason; returns the suppression as stored."""
        record: asyncpg.Record = await self.conn.fetchrow(
            f"""
            INSERT INTO suppressions (brand_id, address, reason) VALUES ($1, $2, $3)
            ON CONFLICT (brand_id, address) DO UPDATE SET reason = EXCLUDED.reason
            RETURNING {COLUMNS}
            """,
            brand_id,
            address,
            reason,
        )
        return record

    async def get(self, brand_id: str, address: str) -> asyncpg.Record | None:
        record: asyncpg.Record | None = await self.conn.fetchrow(
            f"SELECT {COLUMNS} FROM suppressions WHERE brand_id = $1 AND address = $2",
            brand_id,
            address,
        )
        return record

    async def remove(self, brand_id: str, address: str) -> bool:
        """True if the address was on the list."""
        status: str = await self.conn.execute(
            "DELETE FROM suppressions WHERE brand_id = $1 AND address = $2", brand_id, address
        )
        return status != "DELETE 0"

    async def page(
        self, brand_id: str, *, reason: str | None, after: str | None, limit: int
    ) -> list[asyncpg.Record]:
        """Up to `limit` of the brand's suppressions in address order, after `after`."""
        p = Params()
        conditions = [f"brand_id = {p(brand_id)}"]
        if reason is not None:
            conditions.append(f"reason = {p(reason)}")
        if after is not None:
            conditions.append(f"address > {p(after)}")
        rows: list[asyncpg.Record] = await self.conn.fetch(
            f"""
            SELECT {COLUMNS} FROM suppressions WHERE {" AND ".join(conditions)}
            ORDER BY address LIMIT {p(limit)}
            """,
            *p.values,
        )
        return rows

    async def add_missing(self, entries: Sequence[tuple[str, str, str]]) -> None:
        """Suppress each (brand_id, address, reason); an address already suppressed keeps
        the reason it has."""
        await self.conn.execute(
            """
            INSERT INTO suppressions (brand_id, address, reason)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
            ON CONFLICT (brand_id, address) DO NOTHING
            """,
            [entry[0] for entry in entries],
            [entry[1] for entry in entries],
            [entry[2] for entry in entries],
        )
