"""Baseline for bench/deliver.py: procrastinate as it comes (its PsycopgConnector, default
pool), one worker process running no-op jobs. Prints jobs per second."""

from __future__ import annotations

import asyncio
import os
import time

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ["DATABASE_URL"]))


@app.task(name="bench_noop", queue="bench")
async def noop() -> None:
    pass


async def main(jobs: int) -> None:
    async with app.open_async():
        for start in range(0, jobs, 500):
            await noop.batch_defer_async(*({} for _ in range(min(500, jobs - start))))
        started = time.perf_counter()
        await app.run_worker_async(queues=["bench"], wait=False, concurrency=1)
        print(jobs / (time.perf_counter() - started))


if __name__ == "__main__":
    import logging

    logging.disable(logging.INFO)
    asyncio.run(main(int(os.environ.get("NOOP_JOBS", "3000"))))
