"""Drain a 100,000-recipient run with real worker processes, beside procrastinate's own
throughput for no-op jobs measured in the same run.

    python3 -m uv run --frozen python bench/deliver.py [--recipients 100000] [--noop-jobs 3000]

Uses the database `messaging_bench` on the local PostgreSQL (created and migrated if
missing). For each scenario it empties the queue and the runs, publishes one run with
`publish_campaign` (as the web process does), starts the worker processes
(`python -m jobs.worker`, output to /dev/null) and reports messages per second over the
run's own clock (completed_at - started_at). Scenarios:
- log provider, 1 worker and 2 workers (each message is a JSON log line, to /dev/null);
- webhook provider to a fast local HTTP sink (uvicorn, in its own process), 1 worker.
Baseline: procrastinate's stock PsycopgConnector running no-op jobs, 1 worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/messaging_bench"
)
os.environ["DATABASE_URL"] = DATABASE_URL  # read by jobs.app at import

import asyncpg  # noqa: E402
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402

from app.auth import AccessToken  # noqa: E402
from app.publishing import publish_campaign  # noqa: E402
from app.schemas import Recipient  # noqa: E402
from app.settings import Settings  # noqa: E402
from db.create_database import create_database  # noqa: E402
from db.pool import connect  # noqa: E402

SINK_APP = ROOT / "bench" / "sink.py"
NOOP_APP = ROOT / "bench" / "noop_app.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def reset(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "TRUNCATE procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs,"
        " procrastinate_workers, deliveries, runs CASCADE"
    )


async def publish(conn: asyncpg.Connection, n: int, batch_size: int) -> str:
    campaign_id = await conn.fetchval(
        "INSERT INTO campaigns (brand_id, name, channel, status, subject, body, created_by,"
        " sender) VALUES ('bench', 'bench', 'email', 'active', 'Hello', 'Hello {{person_id}}',"
        " 'bench', 'bench@example.com') RETURNING id"
    )
    caller = AccessToken(exp=datetime(2099, 1, 1, tzinfo=UTC), sub="bench", brands=["*"])
    recipients = [Recipient(f"p{i}", f"user{i}@example{i % 97}.com") for i in range(n)]
    run = await publish_campaign(
        conn, str(campaign_id), recipients, caller, max_recipients=n, batch_size=batch_size
    )
    return str(run.id)


async def drain(conn: asyncpg.Connection, run_id: str, env: dict[str, str], workers: int) -> float:
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "jobs.worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        while True:
            row = await conn.fetchrow(
                "SELECT status, sent_count, completed_at - started_at AS took FROM runs"
                " WHERE id = $1",
                run_id,
            )
            if row["status"] == "completed":
                return float(row["sent_count"] / row["took"].total_seconds())
            await asyncio.sleep(0.2)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()


async def noop_baseline(conn: asyncpg.Connection, jobs: int) -> float:
    await reset(conn)
    env = {**os.environ, "NOOP_JOBS": str(jobs)}
    result = subprocess.run(
        [sys.executable, str(NOOP_APP)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


async def main(recipients: int, noop_jobs: int) -> None:
    await create_database(DATABASE_URL)
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = DATABASE_URL
    command.upgrade(config, "head")
    conn = await connect(DATABASE_URL)
    settings = replace(Settings(), database_url=DATABASE_URL)
    base_env = {**os.environ, "DATABASE_URL": DATABASE_URL, "LOG_LEVEL": "INFO"}

    baseline = await noop_baseline(conn, noop_jobs)
    print(f"baseline: procrastinate no-op jobs, PsycopgConnector, 1 worker: {baseline:8.0f} jobs/s")

    sink_port = free_port()
    sink = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.sink:app",
            "--port",
            str(sink_port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
    )
    time.sleep(1.5)
    webhook_env = {
        **base_env,
        "EMAIL_PROVIDER": "webhook",
        "WEBHOOK_URL": f"http://127.0.0.1:{sink_port}/messages",
        "WEBHOOK_SECRET": "bench",
    }
    scenarios = [
        ("log provider, 1 worker", base_env, 1),
        ("log provider, 2 workers", base_env, 2),
        ("webhook to local sink, 1 worker", webhook_env, 1),
        ("webhook to local sink, 2 workers", webhook_env, 2),
    ]
    try:
        for name, env, workers in scenarios:
            await reset(conn)
            run_id = await publish(conn, recipients, settings.delivery_batch_size)
            started = time.perf_counter()
            rate = await drain(conn, run_id, env, workers)
            wall = time.perf_counter() - started
            print(
                f"{name:>34}: {rate:8.0f} messages/s  ({recipients} in {wall:5.1f} s wall,"
                f" {rate / baseline:4.1f}x the no-op job rate)"
            )
    finally:
        sink.terminate()
        sink.wait()
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--noop-jobs", type=int, default=3000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.recipients, arguments.noop_jobs))
