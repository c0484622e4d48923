"""SQL of the suppressions table.

Each suppression records its `source`: `api` (PUT), `provider:<name>` (a provider's
feedback or refusal), `sms_stop` (the recipient texted STOP). The recipient's own SMS
opt-outs are added by `opt_out` and lifted by `opt_in`, and only those: a START never
lifts what a brand or a bounce put there."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from db.params import Params

COLUMNS = "brand_id, address, reason, created_at"
API = "api"
SMS_STOP = "sms_stop"
"""The recipient texted an opt-out word to a number the brand sends from."""
TWILIO_OPTED_OUT = "provider:twilio"
"""Twilio refused a send with 21610: the recipient had texted STOP to that sender."""
RECIPIENT_OPT_OUTS = (SMS_STOP, TWILIO_OPTED_OUT)
"""The recipient's own word, either way: what their START lifts."""


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
        """Add the address, or change its reason (the brand's word now: source `api`);
        returns the suppression as stored."""
        record: asyncpg.Record = await self.conn.fetchrow(
            f"""
            INSERT INTO suppressions (brand_id, address, reason, source)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (brand_id, address)
                DO UPDATE SET reason = EXCLUDED.reason, source = EXCLUDED.source
            RETURNING {COLUMNS}
            """,
            brand_id,
            address,
            reason,
            API,
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

    async def add_missing(self, entries: Sequence[tuple[str, str, str]], source: str) -> None:
        """Suppress each (brand_id, address, reason); an address already suppressed keeps
        the reason it has."""
        await self.conn.execute(
            """
            INSERT INTO suppressions (brand_id, address, reason, source)
            SELECT b, a, r, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS e(b, a, r)
            ON CONFLICT (brand_id, address) DO NOTHING
            """,
            [entry[0] for entry in entries],
            [entry[1] for entry in entries],
            [entry[2] for entry in entries],
            source,
        )

    async def opt_out(
        self, entries: Sequence[tuple[str, str]], source: str
    ) -> list[asyncpg.Record]:
        """The recipient opted out: suppress each (brand_id, address) brand-wide, reason
        `unsubscribed`, from `source` (SMS_STOP or TWILIO_OPTED_OUT). An address already
        suppressed keeps its reason and source. Returns the suppressions it added
        (brand_id, address, reason, source): the one place SMS opt-outs are made."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            """
            INSERT INTO suppressions (brand_id, address, reason, source)
            SELECT DISTINCT b, a, 'unsubscribed', $3
            FROM unnest($1::text[], $2::text[]) AS e(b, a)
            ON CONFLICT (brand_id, address) DO NOTHING
            RETURNING brand_id, address, reason, source
            """,
            [brand_id for brand_id, _ in entries],
            [address for _, address in entries],
            source,
        )
        return rows

    async def opt_in(self, brand_ids: Sequence[str], address: str) -> list[asyncpg.Record]:
        """The recipient opted back in: lift their own opt-outs of these brands (reason
        `unsubscribed` from RECIPIENT_OPT_OUTS), never what a brand, a bounce or a
        complaint put there. Returns the suppressions it removed: the one place SMS
        opt-outs are lifted."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            """
            DELETE FROM suppressions
            WHERE brand_id = ANY($1::text[]) AND address = $2
              AND reason = 'unsubscribed' AND source = ANY($3::text[])
            RETURNING brand_id, address, reason, source
            """,
            list(brand_ids),
            address,
            list(RECIPIENT_OPT_OUTS),
        )
        return rows
