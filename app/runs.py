"""Business rules of runs: reading one, cancelling one."""

from __future__ import annotations

import asyncpg

from app.auth import AccessToken
from app.campaigns import parse_id, visible_campaign
from app.errors import BadState, NotFound
from app.schemas import Run
from db.deliveries import DeliveryRepository
from db.runs import RunRepository

ENDED = ("completed", "cancelled")


async def visible_run(
    conn: asyncpg.Connection, campaign_id: str, run_id: str, caller: AccessToken
) -> asyncpg.Record:
    campaign = await visible_campaign(conn, campaign_id, caller)
    record = await RunRepository(conn).get(campaign["id"], parse_id(run_id, "run"))
    if record is None:
        raise NotFound(f"run {run_id} does not exist")
    return record


async def cancel_run(
    conn: asyncpg.Connection, campaign_id: str, run_id: str, caller: AccessToken
) -> Run:
    """Pending deliveries become skipped (`cancelled`). Waits for the delivery windows in
    flight to commit; once this commits, no worker sends for the run again."""
    async with conn.transaction():
        run = await visible_run(conn, campaign_id, run_id, caller)
        runs = RunRepository(conn)
        await runs.lock_for_cancel(run["id"])
        # Read again: windows that were in flight when we asked may have completed it.
        status = await runs.status_of(run["id"])
        if status in ENDED:
            raise BadState(
                f"run is {status}; only a queued or running run can be cancelled",
                status=status,
                allowed=["queued", "running"],
            )
        skipped = await DeliveryRepository(conn).skip_pending(run["id"], "cancelled")
        return Run(**await runs.cancel(run["id"], skipped))
