"""SQL of the campaigns table."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg

from db.params import Params

COLUMNS = (
    "id, brand_id, name, channel, status, sender, subject, body, created_by, created_at, "
    "updated_at, priority, quiet_hours, topic, html_body"
)

# "share" lets publishes of one campaign run side by side while a status change waits
# for them; "update" is taken by status changes.
Lock = Literal["share", "update"] | None
_LOCK_CLAUSES = {None: "", "share": "FOR SHARE", "update": "FOR UPDATE"}


class CampaignRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def create(
        self,
        *,
        brand_id: str,
        name: str,
        channel: str,
        sender: str | None,
        subject: str | None,
        body: str,
        created_by: str,
        priority: str = "normal",
        quiet_hours: object = None,
        topic: str | None = None,
        html_body: str | None = None,
    ) -> asyncpg.Record:
        """`quiet_hours`: anything msgspec encodes as the jsonb column's object, or None."""
        record: asyncpg.Record = await self.conn.fetchrow(
            f"""
            INSERT INTO campaigns
                (brand_id, name, channel, sender, subject, body, created_by, priority,
                 quiet_hours, topic, html_body)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            RETURNING {COLUMNS}
            """,
            brand_id,
            name,
            channel,
            sender,
            subject,
            body,
            created_by,
            priority,
            quiet_hours,
            topic,
            html_body,
        )
        return record

    async def get(self, campaign_id: UUID, *, lock: Lock = None) -> asyncpg.Record | None:
        """The campaign; with `lock`, row-locked until the transaction ends."""
        record: asyncpg.Record | None = await self.conn.fetchrow(
            f"SELECT {COLUMNS} FROM campaigns WHERE id = $1 {_LOCK_CLAUSES[lock]}", campaign_id
        )
        return record

    async def get_to_publish(self, campaign_id: UUID) -> asyncpg.Record | None:
        """The campaign, share-locked until the transaction ends, and `has_suppressions`:
        whether its brand has any. Most have none, and their publishes then need not send
        their recipients to the database to be checked."""
        record: asyncpg.Record | None = await self.conn.fetchrow(
            f"""
            SELECT {COLUMNS},
                   EXISTS (SELECT 1 FROM suppressions s WHERE s.brand_id = campaigns.brand_id)
                       AS has_suppressions
            FROM campaigns WHERE id = $1 FOR SHARE
            """,
            campaign_id,
        )
        return record

    async def set_status(self, campaign_id: UUID, status: str) -> asyncpg.Record:
        record: asyncpg.Record = await self.conn.fetchrow(
            f"""
            UPDATE campaigns SET status = $2, updated_at = now()
            WHERE id = $1
            RETURNING {COLUMNS}
            """,
            campaign_id,
            status,
        )
        return record

    async def update_content(
        self,
        campaign_id: UUID,
        *,
        name: str,
        channel: str,
        sender: str | None,
        subject: str | None,
        body: str,
        priority: str,
        quiet_hours: object,
        topic: str | None,
        html_body: str | None,
    ) -> asyncpg.Record:
        record: asyncpg.Record = await self.conn.fetchrow(
            f"""
            UPDATE campaigns
            SET name = $2, channel = $3, sender = $4, subject = $5, body = $6, priority = $7,
                quiet_hours = $8, topic = $9, html_body = $10, updated_at = now()
            WHERE id = $1
            RETURNING {COLUMNS}
            """,
            campaign_id,
            name,
            channel,
            sender,
            subject,
            body,
            priority,
            quiet_hours,
            topic,
            html_body,
        )
        return record

    async def page(
        self,
        *,
        brands: list[str] | None,
        status: str | None,
        after: tuple[datetime, UUID] | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        """Up to `limit` campaigns newest first, after the (created_at, id) `after`.

        `brands` None is every brand. Each filter picks its own statement (from fixed
        fragments, values always as parameters) so that every shape gets a plan that
        uses its index instead of one generic plan full of `$n IS NULL OR ...`.
        """
        p = Params()
        conditions: list[str] = []
        if brands is not None and len(brands) == 1:
            conditions.append(f"brand_id = {p(brands[0])}")
        elif brands is not None:
            conditions.append(f"brand_id = ANY({p(brands)}::text[])")
        if status is not None:
            conditions.append(f"status = {p(status)}")
        if after is not None:
            conditions.append(f"(created_at, id) < ({p(after[0])}, {p(after[1])})")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            f"""
            SELECT {COLUMNS} FROM campaigns {where}
            ORDER BY created_at DESC, id DESC
            LIMIT {p(limit)}
            """,
            *p.values,
        )
        return rows

    async def brands_texting_from(self, sender: str | None) -> list[str]:
        """The brands with an SMS campaign (in any status) sending from `sender`; None:
        the brands with any SMS campaign (all of them send through one Messaging
        Service). For an inbound STOP: the brands the recipient tells to stop."""
        if sender is None:
            rows = await self.conn.fetch(
                "SELECT DISTINCT brand_id FROM campaigns WHERE channel = 'sms' ORDER BY 1"
            )
        else:  # its own statement: a plan that uses campaigns_sms_sender_idx
            rows = await self.conn.fetch(
                "SELECT DISTINCT brand_id FROM campaigns"
                " WHERE channel = 'sms' AND sender = $1 ORDER BY 1",
                sender,
            )
        return [row["brand_id"] for row in rows]
