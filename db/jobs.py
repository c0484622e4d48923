"""SQL over procrastinate's tables that procrastinate itself does not offer."""

from __future__ import annotations

from collections.abc import Collection

import asyncpg


class JobRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def orphaned(
        self, worker_id: int, task_name: str, running: Collection[int], older_than: float
    ) -> list[int]:
        """Jobs `doing` for this live worker that it is not running: procrastinate could
        not record their end (the database was away at that moment). Only those started
        more than `older_than` seconds ago, so that a job fetched an instant ago and not
        yet started is not taken for one."""
        rows = await self.conn.fetch(
            """
            SELECT j.id FROM procrastinate_jobs j
            WHERE j.status = 'doing' AND j.worker_id = $1 AND j.task_name = $2
              AND j.id <> ALL($3::bigint[])
              AND (SELECT max(e.at) FROM procrastinate_events e
                   WHERE e.job_id = j.id AND e.type = 'started')
                  < now() - make_interval(secs => $4)
            """,
            worker_id,
            task_name,
            list(running),
            older_than,
        )
        return [row["id"] for row in rows]
