"""SQL of the runs and deliveries tables."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import asyncpg

COLUMNS = (
    "id, campaign_id, brand_id, status, total_recipients, sent_count, failed_count, "
    "skipped_count, started_at, completed_at, created_by, created_at"
)
DELIVERY_COPY_COLUMNS = ("run_id", "position", "person_id", "recipient", "status", "reason")

# One delivery as publish writes it: (run_id, position, person_id, recipient, status, reason).
DeliveryRow = tuple[UUID, int, str, str, str, str | None]


class RunRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def create(
        self,
        *,
        campaign_id: UUID,
        brand_id: str,
        total_recipients: int,
        skipped_count: int,
        created_by: str,
    ) -> asyncpg.Record:
        record: asyncpg.Record = await self.conn.fetchrow(
            f"""
            INSERT INTO runs (campaign_id, brand_id, total_recipients, skipped_count, created_by)
            VALUES ($1, $2, $3, $4, $5)
            RETURNING {COLUMNS}
            """,
            campaign_id,
            brand_id,
            total_recipients,
            skipped_count,
            created_by,
        )
        return record

    async def get(self, campaign_id: UUID, run_id: UUID) -> asyncpg.Record | None:
        record: asyncpg.Record | None = await self.conn.fetchrow(
            f"SELECT {COLUMNS} FROM runs WHERE id = $1 AND campaign_id = $2", run_id, campaign_id
        )
        return record

    async def copy_deliveries(self, rows: Iterable[DeliveryRow]) -> None:
        """Bulk-write deliveries with COPY (binary): the one write that scales with the list."""
        await self.conn.copy_records_to_table(
            "deliveries", records=rows, columns=DELIVERY_COPY_COLUMNS
        )
