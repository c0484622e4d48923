"""Priority, fairness and rate limits of real worker processes, measured.

    python3 -m uv run --frozen python bench/fairness.py [--recipients 100000] [--tries 10]
        [--limit 200] [--seconds 60]

Uses the database `messaging_bench` on the local PostgreSQL (created and migrated if
missing), two worker processes (`python -m jobs.worker`) and a webhook receiver.
- Priority and fairness: while a `normal` run of `--recipients` is delivered through the
  webhook provider to a fast local receiver (bench/sink.py, its own process), publish every
  second a 1-recipient `high` run and a 10-recipient `normal` run of another brand,
  `--tries` times. Each small run's latency is `completed_at - created_at` (the database's
  clock). Beside it, in the same run, what first-in-first-out would have made it wait:
  the big run's remaining time, `completed_at` of the big run minus the small run's
  `created_at`.
- Rate limit: `EMAIL_RATE_LIMIT=--limit` with two workers for `--seconds`, to a receiver
  that records when each message arrives (tests/fakes/webhook.py HttpSink, in this process).
  Prints the mean rate against the limit, the spread of the per-second counts, and the
  busiest 1-second window against the limit plus its burst (RATE_LIMIT_BURST_SECONDS).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from app.domain.schemas import Recipient  # noqa: E402
from app.http.auth import AccessToken  # noqa: E402
from app.services.publishing import publish_campaign  # noqa: E402
from bench.deliver import DATABASE_URL, free_port, reset  # noqa: E402
from bench.publish import prepare_database  # noqa: E402
from db.pool import connect  # noqa: E402
from tests.fakes.webhook import HttpSink  # noqa: E402

BURST_SECONDS = 0.2


async def campaign(conn: asyncpg.Connection, *, brand: str, priority: str) -> str:
    return str(
        await conn.fetchval(
            "INSERT INTO campaigns (brand_id, name, channel, status, subject, body, created_by,"
            " sender, priority) VALUES ($1, 'bench', 'email', 'active', 'Hi', 'Hello',"
            " 'bench', 'bench@example.com', $2) RETURNING id",
            brand,
            priority,
        )
    )


async def publish(conn: asyncpg.Connection, campaign_id: str, n: int) -> str:
    caller = AccessToken(exp=datetime(2099, 1, 1, tzinfo=UTC), sub="bench", brands=["*"])
    recipients = [Recipient(f"p{i}", f"u{i}@r{i % 97}.example.com") for i in range(n)]
    run = await publish_campaign(
        conn, campaign_id, recipients, caller, max_recipients=n, batch_size=500
    )
    return str(run.id)


@contextmanager
def workers(env: dict[str, str], n: int = 2) -> Iterator[None]:
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "jobs.worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n)
    ]
    try:
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()


async def ended(conn: asyncpg.Connection, run_id: str) -> None:
    while await conn.fetchval(
        "SELECT status NOT IN ('completed', 'cancelled') FROM runs WHERE id = $1::uuid", run_id
    ):
        await asyncio.sleep(0.1)


async def priority_and_fairness(
    conn: asyncpg.Connection, env: dict[str, str], recipients: int, tries: int
) -> None:
    await reset(conn)
    big = await publish(conn, await campaign(conn, brand="big", priority="normal"), recipients)
    high_campaign = await campaign(conn, brand="urgent", priority="high")
    fair_campaign = await campaign(conn, brand="small", priority="normal")
    small: dict[str, list[str]] = {"high, 1 recipient": [], "normal, 10 recipients": []}
    with workers(env):
        while not await conn.fetchval("SELECT sent_count > 0 FROM runs WHERE id = $1::uuid", big):
            await asyncio.sleep(0.1)
        for _ in range(tries):
            await asyncio.sleep(1)
            small["high, 1 recipient"].append(await publish(conn, high_campaign, 1))
            small["normal, 10 recipients"].append(await publish(conn, fair_campaign, 10))
        for run_id in [big, *small["high, 1 recipient"], *small["normal, 10 recipients"]]:
            await ended(conn, run_id)
    big_done = await conn.fetchval("SELECT completed_at FROM runs WHERE id = $1::uuid", big)
    for name, run_ids in small.items():
        rows = await conn.fetch(
            "SELECT completed_at - created_at AS took, $2::timestamptz - created_at AS fifo"
            " FROM runs WHERE id = ANY($1::uuid[])",
            run_ids,
            big_done,
        )
        took = [row["took"].total_seconds() for row in rows]
        fifo = [row["fifo"].total_seconds() for row in rows]
        print(
            f"{name:>22}: completed {statistics.median(took):5.2f} s after publish"
            f" (p50 of {len(took)}, max {max(took):5.2f} s); first-in-first-out would have"
            f" waited {statistics.median(fifo):5.1f} s (p50)"
        )


async def rate_limit(
    conn: asyncpg.Connection, env: dict[str, str], limit: float, seconds: float
) -> None:
    await reset(conn)
    await conn.execute("TRUNCATE rate_buckets, provider_pauses")
    with HttpSink() as sink:
        env = {
            **env,
            "WEBHOOK_URL": sink.url,
            "EMAIL_RATE_LIMIT": str(limit),
            "RATE_LIMIT_BURST_SECONDS": str(BURST_SECONDS),
        }
        run_id = await publish(
            conn, await campaign(conn, brand="b", priority="normal"), int(limit * (seconds + 10))
        )
        with workers(env):
            while len(sink.requests) < limit * (seconds + 2):
                await asyncio.sleep(0.5)
        await conn.execute("UPDATE runs SET status = 'cancelled' WHERE id = $1::uuid", run_id)
        times = sorted(request.received_at for request in list(sink.requests))
    start = times[0] + 1  # skip the first second: the buckets start full
    measured = [t for t in times if start <= t < start + seconds]
    per_second = [
        sum(1 for t in measured if start + s <= t < start + s + 1) for s in range(int(seconds))
    ]
    rate = len(measured) / seconds
    busiest = max(sum(1 for t in times if t0 <= t < t0 + 1) for t0 in measured)
    burst = max(1.0, limit * BURST_SECONDS)
    print(
        f"rate limit {limit:.0f}/s, 2 workers, {seconds:.0f} s: {rate:7.1f}/s"
        f" ({100 * (rate / limit - 1):+5.1f}% of the limit); per second p5/p50/p95"
        f" {sorted(per_second)[len(per_second) // 20]}/{statistics.median(per_second):.0f}/"
        f"{sorted(per_second)[len(per_second) * 19 // 20]}; busiest 1-s window {busiest}"
        f" (limit + burst = {limit + burst:.0f})"
    )


async def main(args: argparse.Namespace) -> None:
    await prepare_database(DATABASE_URL)
    conn = await connect(DATABASE_URL)
    base_env = {**os.environ, "DATABASE_URL": DATABASE_URL, "LOG_LEVEL": "WARNING"}
    sink_port = free_port()
    uvicorn = [sys.executable, "-m", "uvicorn", "bench.sink:app", "--port", str(sink_port)]
    sink = subprocess.Popen([*uvicorn, "--log-level", "warning", "--no-access-log"], cwd=ROOT)
    time.sleep(1.5)
    webhook_env = {
        **base_env,
        "EMAIL_PROVIDER": "webhook",
        "WEBHOOK_URL": f"http://127.0.0.1:{sink_port}/messages",
        "WEBHOOK_SECRET": "bench",
    }
    try:
        await priority_and_fairness(conn, webhook_env, args.recipients, args.tries)
        await rate_limit(conn, webhook_env, args.limit, args.seconds)
    finally:
        sink.terminate()
        sink.wait()
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--limit", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    asyncio.run(main(parser.parse_args()))
