"""A 429 for one address beside another brand's run, measured (issue 21).

    python3 -m uv run --frozen python bench/throttling.py [--recipients 3000] [--rounds 3]

Uses the database `messaging_bench` on the local PostgreSQL (BENCH_DATABASE_URL names
another), two worker processes (`python -m jobs.worker`, default settings) and a local
webhook receiver (tests/fakes/webhook.py HttpSink, in this process) that answers one address
`429` with `Retry-After: 3` every time, and everyone else 200. Per round, in an order that
alternates: brand B's run of --recipients alone, and the same run published while brand A's
20-recipient run, whose first recipient is that address, is being throttled. Rate = sent /
(completed_at - started_at) of B's run. Prints each figure, the medians and their ratio
(the issue asks 0.8x or more), and whether a provider-wide pause was ever stored.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from app.domain.schemas import Recipient  # noqa: E402
from app.http.auth import AccessToken  # noqa: E402
from app.services.publishing import publish_campaign  # noqa: E402
from bench.deliver import DATABASE_URL, reset  # noqa: E402
from bench.fairness import campaign, ended, workers  # noqa: E402
from bench.publish import prepare_database  # noqa: E402
from db.pool import connect  # noqa: E402
from tests.fakes.webhook import HttpSink, Reply  # noqa: E402

THROTTLED = "throttled@a.example.com"


async def publish(conn: asyncpg.Connection, campaign_id: str, n: int, domain: str) -> str:
    caller = AccessToken(exp=datetime(2099, 1, 1, tzinfo=UTC), sub="bench", brands=["*"])
    recipients = [Recipient(f"p{i}", f"u{i}@{domain}") for i in range(n)]
    if domain == "a.example.com":
        recipients[0] = Recipient("p0", THROTTLED)
    run = await publish_campaign(
        conn, campaign_id, recipients, caller, max_recipients=n, batch_size=500
    )
    return str(run.id)


async def rate(conn: asyncpg.Connection, run_id: str) -> float:
    row = await conn.fetchrow(
        "SELECT sent_count, completed_at - started_at AS took FROM runs WHERE id = $1::uuid",
        run_id,
    )
    return float(row["sent_count"] / row["took"].total_seconds())


async def one(conn: asyncpg.Connection, env: dict[str, str], n: int, beside: bool) -> float:
    await reset(conn)
    await conn.execute("TRUNCATE provider_pauses")
    a = await campaign(conn, brand="brand-a", priority="normal")
    b = await campaign(conn, brand="brand-b", priority="normal")
    with workers(env):
        await asyncio.sleep(2)  # both workers up
        if beside:
            await publish(conn, a, 20, "a.example.com")
            await asyncio.sleep(1)  # its throttled delivery has met its first 429
        run_id = await publish(conn, b, n, "b.example.com")
        await ended(conn, run_id)
    pauses = await conn.fetchval("SELECT count(*) FROM provider_pauses")
    figure = await rate(conn, run_id)
    label = "beside a throttled address" if beside else "alone"
    print(f"brand B, {n} recipients, {label}: {figure:.0f} msg/s; provider pauses: {pauses}")
    return figure


async def main(n: int, rounds: int) -> None:
    await prepare_database(DATABASE_URL)
    conn = await connect(DATABASE_URL)
    figures: dict[bool, list[float]] = {False: [], True: []}
    try:
        with HttpSink() as sink:
            sink.replies[THROTTLED] = Reply(status=429, headers={"Retry-After": "3"})
            plain = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
            env = {
                **plain,
                "DATABASE_URL": DATABASE_URL,
                "EMAIL_PROVIDER": "webhook",
                "WEBHOOK_URL": sink.url,
                "WEBHOOK_SECRET": "bench",
            }
            for round_number in range(rounds):
                order = [False, True] if round_number % 2 == 0 else [True, False]
                for beside in order:
                    figures[beside].append(await one(conn, env, n, beside))
    finally:
        await conn.close()
    alone, beside = (statistics.median(figures[key]) for key in (False, True))
    print(
        f"\nmedians of {rounds}: alone {alone:.0f} msg/s, beside {beside:.0f} msg/s:"
        f" {beside / alone:.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.recipients, arguments.rounds))
