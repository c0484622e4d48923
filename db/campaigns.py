"""SQL of the campaigns table."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

import asyncpg

COLUMNS = (
    "id, brand_id, name, channel, status, sender, subject, body, created_by, created_at, updated_at"
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
    ) -> asyncpg.Record:
        record: asyncpg.Record = await self.conn.fetchrow(
            f"""
            INSERT INTO campaigns (brand_id, name, channel, sender, subject, body, created_by)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            RETURNING {COLUMNS}
            """,
            brand_id,
            name,
            channel,
            sender,
            subject,
            body,
            created_by,
        )
        return record

    async def get(self, campaign_id: UUID, *, lock: Lock = None) -> asyncpg.Record | None:
        """The campaign; with `lock`, row-locked until the transaction ends."""
        record: asyncpg.Record | None = await self.conn.fetchrow(
            f"SELECT {COLUMNS} FROM campaigns WHERE id = $1 {_LOCK_CLAUSES[lock]}", campaign_id
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
