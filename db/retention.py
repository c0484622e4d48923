"""SQL of the partitions of `deliveries`, of their retention and of the erasure of the
recipients' data they hold (jobs/retention.py).

A month partition `deliveries_YYYY_MM` holds the deliveries of the runs whose UUIDv7 id
was made in that (UTC) month: the run ids from uuid_v7_floor(first day) up to
uuid_v7_floor(first day of the next month). The same range of `runs.id` (its primary
key) lists those runs. The DEFAULT partition `deliveries_legacy` holds the deliveries of
runs made before ids were UUIDv7 (alembic/versions/0006).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from uuid import UUID

import asyncpg

# The bounds of a month's run ids, from a `date` parameter (the month's first day).
_LOWER = "uuid_v7_floor(CAST({} AS timestamp) AT TIME ZONE 'UTC')"
_UPPER = "uuid_v7_floor((CAST({} AS timestamp) + interval '1 month') AT TIME ZONE 'UTC')"

_ADVISORY_NAMESPACE = 7411  # this service's first key among advisory locks (db/runs.py)
_MAINTENANCE_LOCK = "hashtext('deliveries maintenance')"


class RetentionRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def try_lock_maintenance(self) -> bool:
        """Session lock: one maintenance at a time, however many workers tick."""
        locked: bool = await self.conn.fetchval(
            f"SELECT pg_try_advisory_lock({_ADVISORY_NAMESPACE}, {_MAINTENANCE_LOCK})"
        )
        return locked

    async def unlock_maintenance(self) -> None:
        await self.conn.execute(
            f"SELECT pg_advisory_unlock({_ADVISORY_NAMESPACE}, {_MAINTENANCE_LOCK})"
        )

    async def set_lock_timeout(self, wait: timedelta) -> None:
        """For the transaction: DDL that waits longer for its lock gives up (and every
        query queued behind it goes on) instead of stalling `deliveries`."""
        await self.conn.execute(
            "SELECT set_config('lock_timeout', $1, true)",
            f"{int(wait.total_seconds() * 1000)}ms",
        )

    async def months(self) -> list[date]:
        """The months that have a partition, oldest first."""
        return await partition_months(self.conn, "deliveries")

    async def ensure_month(self, month: date) -> str:
        """The month's partition, created (and attached) if missing; its name."""
        name: str = await self.conn.fetchval("SELECT deliveries_ensure_partition($1)", month)
        return name

    async def month_has_runs_to_keep(self, month: date, cutoff: datetime) -> bool:
        """Whether a run of the month has not ended, or ended at `cutoff` or later."""
        keep: bool = await self.conn.fetchval(
            f"""
            SELECT EXISTS (
                SELECT 1 FROM runs
                WHERE id >= {_LOWER.format("$1")} AND id < {_UPPER.format("$1")}
                  AND (completed_at IS NULL OR completed_at >= $2)
            )
            """,
            month,
            cutoff,
        )
        return keep

    async def drop_month(self, month: date, now: datetime) -> int:
        """In the caller's transaction: the month's runs are marked purged and its
        partition is dropped. Returns how many runs were marked."""
        status: str = await self.conn.execute(
            f"""
            UPDATE runs SET deliveries_purged_at = $2
            WHERE id >= {_LOWER.format("$1")} AND id < {_UPPER.format("$1")}
              AND deliveries_purged_at IS NULL
            """,
            month,
            now,
        )
        await self.conn.execute(
            "SELECT deliveries_drop_partition('deliveries_' || to_char($1::date, 'YYYY_MM'))",
            month,
        )
        return int(status.rpartition(" ")[2])

    async def runs_to_purge_one_by_one(
        self, cutoff: datetime, before_month: date, limit: int
    ) -> list[asyncpg.Record]:
        """Runs that ended before `cutoff` and still have their deliveries, whose
        partition is not dropped whole: those of months before `before_month` (a month
        whose partition waits for a run still to keep) and legacy runs (ids not UUIDv7,
        wherever their random id put them). `id`, `total_recipients`, oldest end first."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            f"""
            SELECT id, total_recipients FROM runs
            WHERE deliveries_purged_at IS NULL AND completed_at IS NOT NULL
              AND completed_at < $1
              AND (id < {_LOWER.format("$2")} OR substring(id::text FROM 15 FOR 1) <> '7')
            ORDER BY completed_at
            LIMIT $3
            """,
            cutoff,
            before_month,
            limit,
        )
        return rows

    async def delete_deliveries(self, run_id: UUID, first: int, last: int) -> int:
        """Delete the run's deliveries at positions first..last (a primary-key range)."""
        status: str = await self.conn.execute(
            "DELETE FROM deliveries WHERE run_id = $1 AND position BETWEEN $2 AND $3",
            run_id,
            first,
            last,
        )
        return int(status.rpartition(" ")[2])

    async def mark_purged(self, run_id: UUID, now: datetime) -> None:
        await self.conn.execute(
            "UPDATE runs SET deliveries_purged_at = $2 WHERE id = $1", run_id, now
        )

    async def runs_with_data_to_erase(self, cutoff: datetime, limit: int) -> list[asyncpg.Record]:
        """Runs that ended before `cutoff` whose recipients' data is still kept (the partial
        index runs_data_to_erase_idx: runs without data are not read).
        `id`, `total_recipients`, oldest end first."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            """
            SELECT id, total_recipients FROM runs
            WHERE with_data AND data_erased_at IS NULL AND completed_at < $1
            ORDER BY completed_at
            LIMIT $2
            """,
            cutoff,
            limit,
        )
        return rows

    async def erase_data(self, run_id: UUID, first: int, last: int) -> int:
        """Erase the data of the run's deliveries at positions first..last (a primary-key
        range of delivery_data); returns how many had some."""
        status: str = await self.conn.execute(
            "DELETE FROM delivery_data WHERE run_id = $1 AND position BETWEEN $2 AND $3",
            run_id,
            first,
            last,
        )
        return int(status.rpartition(" ")[2])

    async def mark_data_erased(self, run_id: UUID, now: datetime) -> None:
        await self.conn.execute("UPDATE runs SET data_erased_at = $2 WHERE id = $1", run_id, now)

    async def deliveries_gone(self, run_id: UUID, retention: timedelta | None) -> bool:
        """Whether the run's deliveries were removed, or are past `retention` and about
        to be: from the moment a run's deliveries expire, its listing says so, whether or
        not the maintenance has removed them yet."""
        gone: bool = await self.conn.fetchval(
            """
            SELECT deliveries_purged_at IS NOT NULL
                   OR coalesce(completed_at < now() - $2::interval, false)
            FROM runs WHERE id = $1
            """,
            run_id,
            retention,
        )
        return gone

    async def data_erased(self, run_id: UUID, data_retention: timedelta) -> bool:
        """Whether the recipients' data of the run was erased, or is past
        `data_retention` and about to be (as deliveries_gone)."""
        erased: bool = await self.conn.fetchval(
            """
            SELECT with_data AND (data_erased_at IS NOT NULL
                                  OR coalesce(completed_at < now() - $2::interval, false))
            FROM runs WHERE id = $1
            """,
            run_id,
            data_retention,
        )
        return erased


async def partition_months(conn: asyncpg.Connection, table: str) -> list[date]:
    """The months that `table` (partitioned by month as `<table>_YYYY_MM`) has a partition
    for, oldest first."""
    rows = await conn.fetch(
        r"""
        SELECT to_date(right(c.relname, 7), 'YYYY_MM') AS month
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = $1::regclass AND c.relname ~ ('^' || $1 || '_\d{4}_\d{2}$')
        ORDER BY month
        """,
        table,
    )
    return [row["month"] for row in rows]
