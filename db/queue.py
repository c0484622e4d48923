"""procrastinate's queue as the service defers to it: queue names, priorities, and jobs
deferred by task name on the caller's connection, inside its transaction (publish defers
a run's jobs in the transaction that writes the run). Neither a pool nor the worker's
tasks are needed for that: the web process never imports the worker (jobs/)."""

from __future__ import annotations

import asyncpg
from procrastinate.jobs import Job
from procrastinate.manager import JobManager
from procrastinate.types import JSONDict

from db.procrastinate import AsyncpgConnector

DELIVER_BATCH = "deliver_batch"
"""The task that delivers a range of a run's deliveries (jobs/tasks.py)."""
SEND_EVENTS = "send_events"
"""The task that POSTs a stream's pending events (jobs/tasks.py, db/events.py)."""
SEND_RUN_EVENTS = "send_run_events"
"""What SEND_EVENTS was called before 0016, by run: jobs the release before queued."""
DELIVERY_QUEUE = "deliveries"
MAINTENANCE_QUEUE = "maintenance"
"""Housekeeping (periodic purges), apart from deliveries in the queue views."""
EVENTS_QUEUE = "events"
"""Events POSTed to EVENTS_WEBHOOK_URL (jobs/events.py)."""
WORKER_QUEUES = [DELIVERY_QUEUE, MAINTENANCE_QUEUE, EVENTS_QUEUE]
"""What every worker process takes jobs from."""

# procrastinate takes the todo job of highest priority first, then the oldest. Deliveries:
# every job of a higher campaign priority goes before any job of a lower one; within one,
# a run's k-th job goes before any run's (k+1)-th, so that runs take turns (round-robin)
# whatever their size or brand: a run published behind a 100,000-recipient one starts as
# soon as a worker slot frees, not after it drained.
_SPACING = 10_000_000
PRIORITY_BASE = {"high": 2 * _SPACING, "normal": _SPACING, "low": 0}
_MAX_RANK = _SPACING - 1
HOUSEKEEPING_PRIORITY = 30_000_000
"""Run events and periodic maintenance: few and light, never behind a backlog of sends."""


def delivery_priority(campaign_priority: str, rank: int) -> int:
    """The procrastinate priority of a run's `rank`-th deliver_batch job (0 = first)."""
    return PRIORITY_BASE[campaign_priority] - min(rank, _MAX_RANK)


def first_job_priority(priority: int) -> int:
    """The priority of the first job of a run of the same campaign priority as a job of
    `priority`."""
    return -(-priority // _SPACING) * _SPACING


# Every defer passes its own connection: the manager's connector never opens a pool.
_MANAGER = JobManager(AsyncpgConnector())


async def defer(conn: asyncpg.Connection, jobs: list[Job]) -> list[int]:
    """Defer `jobs` on `conn`, in its transaction; their ids."""
    deferred = await _MANAGER.batch_defer_jobs_async(jobs=jobs, connection=conn)
    return [job.id for job in deferred if job.id is not None]


def job(task_name: str, queue: str, priority: int, kwargs: JSONDict, **options: object) -> Job:
    """A job of `task_name`; `options`: procrastinate's `lock`, `scheduled_at`."""
    return Job(
        id=None,
        queue=queue,
        priority=priority,
        lock=options.get("lock"),  # type: ignore[arg-type]
        queueing_lock=None,
        task_name=task_name,
        task_kwargs=kwargs,
        scheduled_at=options.get("scheduled_at"),  # type: ignore[arg-type]
    )
