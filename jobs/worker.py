"""The worker process (`python -m jobs.worker`): runs deliver_batch jobs, and the periodic
housekeeping, until SIGTERM."""

from __future__ import annotations

import asyncio

from app.logs import configure_logging
from app.settings import get_settings
from jobs.app import DELIVERY_QUEUE, MAINTENANCE_QUEUE, app


async def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    async with app.open_async():
        await app.run_worker_async(queues=[DELIVERY_QUEUE, MAINTENANCE_QUEUE], name="deliveries")


if __name__ == "__main__":
    asyncio.run(main())
