"""SQL over procrastinate's tables that procrastinate itself does not offer."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from uuid import UUID

import asyncpg

from db.text import storable


class JobRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def orphaned(
        self, worker_id: int, running: Collection[int], older_than: float
    ) -> list[int]:
        """Jobs `doing` for this live worker that it is not running: procrastinate could
        not record their end (the database was away at that moment). Only those started
        more than `older_than` seconds ago, so that a job fetched an instant ago and not
        yet started is not taken for one."""
        rows = await self.conn.fetch(
            """
            SELECT j.id FROM procrastinate_jobs j
            WHERE j.status = 'doing' AND j.worker_id = $1 AND j.id <> ALL($2::bigint[])
              AND (SELECT max(e.at) FROM procrastinate_events e
                   WHERE e.job_id = j.id AND e.type = 'started')
                  < now() - make_interval(secs => $3)
            """,
            worker_id,
            list(running),
            older_than,
        )
        return [row["id"] for row in rows]

    async def failures(self, job_id: int) -> tuple[int, str | None]:
        """How many tries of the job failed for a reason other than the database being
        away, and the last such error."""
        row = await self.conn.fetchrow(
            "SELECT failures, last_error FROM delivery_job_failures WHERE job_id = $1", job_id
        )
        return (row["failures"], row["last_error"]) if row else (0, None)

    async def count_failure(self, job_id: int, error: str) -> int:
        """One more such failure of the job; returns how many there were."""
        failures: int = await self.conn.fetchval(
            """
            INSERT INTO delivery_job_failures AS f (job_id, failures, last_error)
            VALUES ($1, 1, $2)
            ON CONFLICT (job_id) DO UPDATE
                SET failures = f.failures + 1, last_error = $2, failed_at = now()
            RETURNING failures
            """,
            job_id,
            storable(error, 1000),
        )
        return failures

    async def newcomer_waiting(self, at_least: int, run_id: str) -> bool:
        """Whether a deliver_batch job of another run, due now, waits with a priority of
        `at_least` or more: the first job of a run of the same campaign priority, or a job
        of a higher one. (Delivery jobs carry no procrastinate lock: every one counted can
        be started at once.)"""
        waiting: bool = await self.conn.fetchval(
            """
            SELECT EXISTS (
                SELECT 1 FROM procrastinate_jobs
                WHERE status = 'todo' AND priority >= $1 AND queue_name = 'deliveries'
                  AND lock IS NULL AND (scheduled_at IS NULL OR scheduled_at <= now())
                  AND args->>'run_id' IS DISTINCT FROM $2
            )
            """,
            at_least,
            run_id,
        )
        return waiting

    async def now_plus(self, seconds: float) -> datetime:
        """The database's now() plus `seconds`: the clock procrastinate decides by."""
        at: datetime = await self.conn.fetchval("SELECT now() + make_interval(secs => $1)", seconds)
        return at

    async def lock_range(self, run_id: str, first: int) -> None:
        """Serialise, until the transaction ends, whoever makes sure a job will take the
        rest of the range of run `run_id` starting at `first`."""
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", _RANGE_LOCKS, f"{run_id}:{first}"
        )

    async def delete_waiting_deliveries(self, run_id: UUID) -> int:
        """Delete the run's deliver_batch jobs still waiting in the queue (`todo`: those of
        a scheduled run, follow-ups of a running one) with procrastinate's own cancel, in
        the caller's transaction; returns how many. Jobs being run are left alone: their
        windows see the run ended. Its send_events jobs are not touched."""
        deleted: int = await self.conn.fetchval(
            """
            SELECT count(procrastinate_cancel_job_v1(id, false, true)) FROM procrastinate_jobs
            WHERE args ->> 'run_id' = $1 AND status = 'todo' AND task_name = 'deliver_batch'
            """,
            str(run_id),
        )
        return deleted

    async def bring_forward(
        self, run_id: str, first: int, at: datetime, *, besides: int | None = None
    ) -> bool:
        """If a deliver_batch job of that range other than `besides` (the job asking: a
        recovery may have put it back in the queue while it runs, and its end then takes
        it out) waits in the queue, make it due at `at` if that is earlier than it was
        (never later), and say so; under `lock_range`."""
        job_id: int | None = await self.conn.fetchval(
            """
            WITH waiting AS (
                SELECT id, scheduled_at FROM procrastinate_jobs
                WHERE status = 'todo' AND task_name = 'deliver_batch'
                  AND args->>'run_id' = $1 AND (args->>'first')::int = $2
                  AND id IS DISTINCT FROM $4
                ORDER BY scheduled_at NULLS FIRST, id LIMIT 1
                FOR UPDATE
            )
            UPDATE procrastinate_jobs j
            SET scheduled_at = CASE WHEN w.scheduled_at > $3 THEN $3 ELSE w.scheduled_at END
            FROM waiting w WHERE j.id = w.id
            RETURNING j.id
            """,
            run_id,
            first,
            at,
            besides,
        )
        return job_id is not None

    async def requeue_if_held_by(self, job_id: int, worker_id: int | None) -> bool:
        """Put the job back in the queue if it is still `doing` for `worker_id` (a dead
        worker's): another worker's recovery may have requeued it, and a third started it,
        since this one listed it."""
        requeued: int | None = await self.conn.fetchval(
            """
            SELECT count(procrastinate_retry_job_v2(id, now(), NULL, NULL, NULL))
            FROM (
                SELECT id FROM procrastinate_jobs
                WHERE id = $1 AND status = 'doing' AND worker_id IS NOT DISTINCT FROM $2
                FOR UPDATE
            ) AS held
            """,
            job_id,
            worker_id,
        )
        return bool(requeued)


# Advisory lock namespace of deliver_batch ranges (db/runs.py has 7411 for runs).
_RANGE_LOCKS = 7412
