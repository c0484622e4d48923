"""The worker's maintenance of `deliveries` (the hourly `maintain_deliveries` task):
month partitions made ahead of time, DELIVERY_RETENTION_DAYS, and the erasure of the
recipients' data DELIVERY_DATA_DAYS after their run ended. The same task keeps the audit
trail's month partitions (`maintain_audit`): ahead of time, and AUDIT_RETENTION_DAYS.

Retention removes deliveries a month partition at a time: a month whose last day is
over and whose runs all ended before the cutoff is dropped whole (DROP TABLE: no DELETE,
nothing for vacuum), its runs marked `deliveries_purged_at` in the same transaction. A
month that still holds a run to keep (not ended, or ended too recently) waits for it;
once the whole month is older than the cutoff, its expired runs go one by one, in
primary-key batches of DELETE_BATCH rows, as do legacy runs (ids from before UUIDv7).
A run's deliveries listing is 410 from the moment they expire (db/retention.py).

Data is erased run by run, from the runs that have some (`runs.with_data`, a partial
index of those not erased yet): a DELETE from `delivery_data` over a primary-key range of
ERASE_BATCH deliveries at a time, each its own short transaction, then the run is marked
`data_erased_at`. However many deliveries there are, an hourly round reads only the data
of the runs whose data expired since the last one (ADR 0060). A retry is 412
`data_erased` from the moment the data expire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import TypeVar

import asyncpg

from db.audit import AuditRepository
from db.retention import RetentionRepository

logger = logging.getLogger(__name__)
T = TypeVar("T")

MONTHS_AHEAD = 3
"""Partitions exist for the current month and this many after it."""
MIN_MONTHS_AHEAD = 2
"""Fewer months ahead than this fails the task (loudly), though publish still works."""
CLOSED_AFTER = timedelta(days=1)
"""A month takes no new run once it ended this long ago (margin for skewed clocks)."""
LOCK_TIMEOUT = timedelta(seconds=2)
"""Longest a partition's CREATE/DROP waits for its lock; it is tried again later."""
DDL_ATTEMPTS = 3
DELETE_BATCH = 5_000
"""Deliveries per DELETE when runs go one by one: short transactions, few row locks."""
RUNS_PER_ROUND = 100
ERASE_BATCH = 5_000
"""Deliveries' data per DELETE that erases it: short transactions, few row locks."""


class PartitionsBehind(Exception):
    """The partitions ahead of time are missing: the maintenance is failing."""


@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    """Months past their retention kept whole for a run still to keep."""
    purged_runs: int = 0
    """Runs whose deliveries were removed, by partition or one by one."""
    erased_runs: int = 0
    """Runs whose recipients' data was erased."""
    skipped: bool = False
    """Another maintenance was running."""


def month_of(moment: datetime) -> date:
    moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def add_months(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def month_start(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)


async def maintain_deliveries(
    pool: asyncpg.Pool,
    retention: timedelta | None,
    *,
    data_retention: timedelta | None = None,
    now: datetime | None = None,
) -> MaintenanceReport:
    """Make the partitions ahead, then apply `retention` (None: keep for ever), then
    erase the data of runs that ended more than `data_retention` ago (None: keep it).
    Raises PartitionsBehind if, after that, fewer than MIN_MONTHS_AHEAD months are ready."""
    now = now or datetime.now(UTC)
    report = MaintenanceReport()
    async with pool.acquire() as conn:
        repo = RetentionRepository(conn)
        if not await repo.try_lock_maintenance():
            report.skipped = True
            logger.info("deliveries maintenance: another one is running")
            return report
        try:
            await _create_ahead(conn, repo, now, report)
            if retention is not None:
                cutoff = now - retention
                await _drop_expired_months(conn, repo, cutoff, now, report)
                await _purge_runs_one_by_one(repo, cutoff, now, report)
            if data_retention is not None:
                await _erase_data(repo, now - data_retention, now, report)
            months = set(await repo.months())
        finally:
            await repo.unlock_maintenance()
    logger.info(
        "deliveries maintenance done",
        extra={
            "partitions_created": report.created,
            "dropped": report.dropped,
            "waiting": report.waiting,
            "purged_runs": report.purged_runs,
            "erased_runs": report.erased_runs,
        },
    )
    needed = [add_months(month_of(now), n) for n in range(MIN_MONTHS_AHEAD + 1)]
    if missing := [m for m in needed if m not in months]:
        raise PartitionsBehind(
            f"deliveries partitions missing for {', '.join(m.strftime('%Y-%m') for m in missing)}"
        )
    return report


async def _ddl(
    conn: asyncpg.Connection,
    repo: RetentionRepository,
    what: str,
    action: Callable[[], Awaitable[T]],
) -> T | None:
    """`action` in a transaction under LOCK_TIMEOUT, tried a few times; None if its lock
    never came (the next maintenance tries again)."""
    for attempt in range(1, DDL_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await repo.set_lock_timeout(LOCK_TIMEOUT)
                return await action()
        except asyncpg.LockNotAvailableError:
            logger.warning(
                "deliveries maintenance: no lock for %s (attempt %d of %d)",
                what,
                attempt,
                DDL_ATTEMPTS,
            )
            await asyncio.sleep(attempt)
    return None


async def _create_ahead(
    conn: asyncpg.Connection, repo: RetentionRepository, now: datetime, report: MaintenanceReport
) -> None:
    existing = set(await repo.months())
    for n in range(MONTHS_AHEAD + 1):
        month = add_months(month_of(now), n)
        if month in existing:
            continue
        name = await _ddl(
            conn,
            repo,
            f"creating the partition of {month:%Y-%m}",
            partial(repo.ensure_month, month),
        )
        if name is not None:
            report.created.append(name)
            logger.info("deliveries partition created", extra={"partition": name})


async def _drop_expired_months(
    conn: asyncpg.Connection,
    repo: RetentionRepository,
    cutoff: datetime,
    now: datetime,
    report: MaintenanceReport,
) -> None:
    for month in await repo.months():
        if month_start(add_months(month, 1)) > now - CLOSED_AFTER:
            break  # this month and the later ones may still take new runs
        name = f"deliveries_{month:%Y_%m}"
        if await repo.month_has_runs_to_keep(month, cutoff):
            if month_start(add_months(month, 1)) <= cutoff:
                report.waiting.append(name)
            continue
        marked = await _ddl(conn, repo, f"dropping {name}", partial(repo.drop_month, month, now))
        if marked is not None:
            report.dropped.append(name)
            report.purged_runs += marked
            logger.info("deliveries partition dropped", extra={"partition": name})


async def _purge_runs_one_by_one(
    repo: RetentionRepository, cutoff: datetime, now: datetime, report: MaintenanceReport
) -> None:
    while runs := await repo.runs_to_purge_one_by_one(cutoff, month_of(cutoff), RUNS_PER_ROUND):
        for run in runs:
            # Each DELETE commits on its own; the mark comes last, so that a maintenance
            # that dies midway finds the run again next time.
            for first in range(0, run["total_recipients"], DELETE_BATCH):
                await repo.delete_deliveries(run["id"], first, first + DELETE_BATCH - 1)
            await repo.mark_purged(run["id"], now)
            report.purged_runs += 1


async def _erase_data(
    repo: RetentionRepository, cutoff: datetime, now: datetime, report: MaintenanceReport
) -> None:
    while runs := await repo.runs_with_data_to_erase(cutoff, RUNS_PER_ROUND):
        for run in runs:
            # Each UPDATE commits on its own; the mark comes last, so that a maintenance
            # that dies midway finds the run again next time.
            for first in range(0, run["total_recipients"], ERASE_BATCH):
                await repo.erase_data(run["id"], first, first + ERASE_BATCH - 1)
            await repo.mark_data_erased(run["id"], now)
            report.erased_runs += 1


@dataclass
class AuditMaintenanceReport:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


async def maintain_audit(
    pool: asyncpg.Pool, retention: timedelta, *, now: datetime | None = None
) -> AuditMaintenanceReport:
    """The audit trail's month partitions: made MONTHS_AHEAD ahead, and those whose whole
    month ended more than `retention` ago dropped (the only way audit rows go: the table
    refuses DELETE). Under the maintenance lock of `maintain_deliveries`, after it.
    Raises PartitionsBehind like it: a change finding no partition could not commit."""
    now = now or datetime.now(UTC)
    report = AuditMaintenanceReport()
    async with pool.acquire() as conn:
        repo, audit = RetentionRepository(conn), AuditRepository(conn)
        if not await repo.try_lock_maintenance():
            logger.info("audit maintenance: another one is running")
            return report
        try:
            months = set(await audit.months())
            for month in (add_months(month_of(now), n) for n in range(MONTHS_AHEAD + 1)):
                if month not in months:
                    what = f"creating the audit partition of {month:%Y-%m}"
                    name = await _ddl(conn, repo, what, partial(audit.ensure_month, month))
                    if name is not None:
                        report.created.append(name)
            for month in sorted(months):
                if month_start(add_months(month, 1)) > now - retention:
                    break  # this month holds changes still to keep, and so do the later ones
                name = f"audit_events_{month:%Y_%m}"
                dropped = await _ddl(
                    conn, repo, f"dropping {name}", partial(audit.drop_month, month)
                )
                if dropped is not None:
                    report.dropped.append(dropped)
            months = set(await audit.months())
        finally:
            await repo.unlock_maintenance()
    if report.created or report.dropped:
        logger.info(
            "audit maintenance done",
            extra={"partitions_created": report.created, "dropped": report.dropped},
        )
    needed = [add_months(month_of(now), n) for n in range(MIN_MONTHS_AHEAD + 1)]
    if missing := [m for m in needed if m not in months]:
        raise PartitionsBehind(
            f"audit_events partitions missing for {', '.join(f'{m:%Y-%m}' for m in missing)}"
        )
    return report
