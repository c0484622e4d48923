"""Reads of the ops views (alembic/versions/0004) that the service itself needs."""

from __future__ import annotations

from uuid import UUID

import asyncpg


class OpsRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def queue_depth(self) -> list[asyncpg.Record]:
        """Jobs per queue and status, with the oldest due job's wait (seconds) for todo."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            """
            SELECT queue_name, status, jobs,
                   extract(epoch FROM oldest_waiting_for)::float8 AS oldest_waiting_seconds
            FROM ops_queue_depth
            """
        )
        return rows

    async def run_progress(self, run_id: UUID) -> asyncpg.Record | None:
        """The run's row of ops_run_progress (status, counts, times), if it exists."""
        row: asyncpg.Record | None = await self.conn.fetchrow(
            "SELECT * FROM ops_run_progress WHERE run_id = $1", run_id
        )
        return row
