"""The procrastinate app. Workers open it on their pool and run its tasks; web never opens
it: publish defers on its own transaction's connection (`configure(connection=conn)`),
which needs no pool of the app's."""

from procrastinate import App

from app.core.settings import get_settings
from db.procrastinate import AsyncpgConnector

DELIVERY_QUEUE = "deliveries"
MAINTENANCE_QUEUE = "maintenance"
"""Housekeeping (periodic purges), apart from deliveries in the queue views."""
EVENTS_QUEUE = "events"
"""Run events POSTed to EVENTS_WEBHOOK_URL (jobs/run_events.py)."""
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


app = App(
    connector=AsyncpgConnector(get_settings().database_url),
    import_paths=["jobs.tasks"],
)
