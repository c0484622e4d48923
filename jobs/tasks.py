"""procrastinate tasks. They take ids, never objects: the database is the truth."""

from typing import cast

from db.idempotency import IdempotencyKeyRepository
from jobs.app import DELIVERY_QUEUE, MAINTENANCE_QUEUE, app
from jobs.asyncpg_connector import AsyncpgConnector


@app.task(name="deliver_batch", queue=DELIVERY_QUEUE)
async def deliver_batch(run_id: str, first: int, last: int) -> None:
    """Deliver the pending deliveries of run `run_id` at positions first..last."""
    raise NotImplementedError("delivery by the worker is issue 3")


# Keys hold 24 h; purging every 10 minutes keeps at most that much extra in the table.
# procrastinate defers each tick once however many workers run.
@app.periodic(cron="*/10 * * * *")
@app.task(name="purge_idempotency_keys", queue=MAINTENANCE_QUEUE)
async def purge_idempotency_keys(timestamp: int) -> int:
    """Delete the expired Idempotency-Keys of publish; returns how many."""
    pool = cast(AsyncpgConnector, app.connector).pool
    async with pool.acquire() as conn:
        return await IdempotencyKeyRepository(conn).purge_expired()
