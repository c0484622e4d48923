"""Costs against the size of `deliveries`: 0, 10 million and 30 million existing rows.

    python3 -m uv run --frozen python bench/growth.py [--sizes 0,10000000,30000000] [--repeat 5]

Each size gets its own database (`messaging_growth_0`, `_1`, ... on the local PostgreSQL,
created afresh and dropped at the end unless `--keep`) and its own web process, so that
the rounds of every figure can be interleaved across sizes (the machine is shared and
noisy: a figure measured minutes apart from its baseline would compare the load, not the
table), in turn: in order in even rounds, in reverse in odd ones. For each size it fills
`deliveries` with that many rows with generated SQL (generate_series; not through the
API): completed runs of 10,000 deliveries each (99.5% `sent`, 0.5% `failed` with an
error), made over the 80 days before yesterday, so in the partitions of this month and
the two or three before. Then `VACUUM (ANALYZE)` (the state autovacuum keeps a table in;
this machine's server runs with autovacuum off) and it measures, medians of `--repeat`
rounds:
- publish of 100,000 recipients through the real web process (request sent to 202), and
  beside it the baseline: asyncpg COPY of the same 100,000 rows into a plain table of the
  deliveries table's shape (as bench/publish.py does);
- delivery of a 20,000-recipient run by one worker process with the `log` provider: the
  run's own clock (completed_at - started_at);
- the deliveries listing (GET, 100 per page) of a completed 100,000-recipient run: its
  first page and a deep one (from position 90,000);
- each ops view, with the query docs/ops.md gives for it.
The runs it publishes are deleted after each round: the filled rows are what grows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE_URL = os.environ.get(
    "GROWTH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/messaging_growth"
)
"""Each size has its own database: this URL with `_0`, `_1`, ... appended."""
PORT = int(os.environ.get("GROWTH_PORT", "8791"))
"""The web process of size i listens on PORT + i."""

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402

from app.services.pagination import cursor_key, encode_cursor, listing_of  # noqa: E402
from bench.publish import SECRET, baseline_copy, body, token, wait_ready  # noqa: E402

RUN_SIZE = 10_000
RUNS_PER_STATEMENT = 100  # 1 million rows per INSERT, one transaction each
FILL_DAYS = 80
PAGE = 100
OPS_QUERIES = {
    "ops_run_progress": """
        SELECT run_id, brand_id, campaign_name, status, total, sent, failed, skipped, pending,
               started_at, completed_at, age, messages_per_second
        FROM ops_run_progress
        WHERE status IN ('scheduled', 'queued', 'running')
           OR completed_at > now() - interval '1 day'
        ORDER BY created_at DESC""",
    "ops_stuck_jobs": (
        "SELECT * FROM ops_stuck_jobs WHERE doing_for > interval '10 minutes' "
        "ORDER BY doing_for DESC"
    ),
    "ops_stalled_runs": (
        "SELECT * FROM ops_stalled_runs WHERE idle_for > interval '5 minutes' "
        "ORDER BY idle_for DESC"
    ),
    "ops_stale_workers": (
        "SELECT * FROM ops_stale_workers WHERE heartbeat_age > interval '30 seconds'"
    ),
    "ops_delivery_failures (one run)": """
        SELECT run_id, status, error, deliveries, last_at, example_position
        FROM ops_delivery_failures WHERE run_id = $1 ORDER BY deliveries DESC""",
    "ops_delivery_failures (last hour)": """
        SELECT run_id, status, error, deliveries, last_at, example_position
        FROM ops_delivery_failures
        WHERE (run_completed_at IS NULL OR run_completed_at > now() - interval '1 hour')
          AND last_at > now() - interval '1 hour'
        ORDER BY deliveries DESC""",
    "ops_queue_depth": "SELECT * FROM ops_queue_depth ORDER BY queue_name, status",
    "ops_delivery_partitions": "SELECT * FROM ops_delivery_partitions ORDER BY month",
    "ops_scheduled_runs": "SELECT * FROM ops_scheduled_runs ORDER BY scheduled_for",
    "ops_undelivered_events": "SELECT * FROM ops_undelivered_events ORDER BY occurred_at",
}


async def prepare_database(url: str) -> None:
    admin = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
    name = url.rsplit("/", 1)[1]
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    command.upgrade(config, "head")


async def drop_database(url: str) -> None:
    admin = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    await admin.close()


async def fill(conn: asyncpg.Connection, campaign_id: uuid.UUID, rows: int) -> float:
    """Add `rows` deliveries (in completed runs of RUN_SIZE) made over the FILL_DAYS before
    yesterday: history, which the ops views' "ended within the day" leaves out, so that
    they answer the same runs at every size and what differs is the table's size alone."""
    now = datetime.now(UTC)
    for days in range(0, FILL_DAYS + 31, 28):
        await conn.execute("SELECT deliveries_ensure_partition($1)", (now - timedelta(days)).date())
    runs = rows // RUN_SIZE
    started = time.perf_counter()
    for first in range(0, runs, RUNS_PER_STATEMENT):
        count = min(RUNS_PER_STATEMENT, runs - first)
        await conn.execute(
            """
            WITH made AS (
                SELECT now() - random() * interval '80 days' - interval '1 day' AS at
                FROM generate_series(1, $2)
            ), new_runs AS (
                INSERT INTO runs (id, campaign_id, brand_id, status, total_recipients,
                                  sent_count, failed_count, started_at, completed_at,
                                  created_by, created_at)
                SELECT uuid_v7(at), $1, 'bench', 'completed', $3, $3 - $3 / 200, $3 / 200,
                       at + interval '1 second', at + interval '10 seconds', 'bench', at
                FROM made
                RETURNING id, created_at
            )
            INSERT INTO deliveries (run_id, position, person_id, recipient, status, attempts,
                                    last_error, provider_message_id, sent_at, updated_at)
            SELECT r.id, p, 'person-' || p, 'user' || p || '@example' || p % 97 || '.com',
                   CASE WHEN p % 200 = 7 THEN 'failed' ELSE 'sent' END, 1,
                   CASE WHEN p % 200 = 7 THEN '550 no such user' END,
                   CASE WHEN p % 200 <> 7 THEN 'msg-' || r.id || '-' || p END,
                   CASE WHEN p % 200 <> 7 THEN r.created_at + interval '5 seconds' END,
                   r.created_at + interval '5 seconds'
            FROM new_runs r, generate_series(0, $3 - 1) p
            """,
            campaign_id,
            count,
            RUN_SIZE,
        )
    return time.perf_counter() - started


async def settle(conn: asyncpg.Connection) -> None:
    """What autovacuum would have done by now (every size alike, the empty one too)."""
    await conn.execute("VACUUM (ANALYZE)")
    await conn.execute("CHECKPOINT")
    # And the kernel's write-back of the fill's gigabytes done: else it shares the disk
    # with the first figures measured (publish commits wait for their WAL flush).
    await asyncio.to_thread(os.sync)


async def timed(coro: Awaitable[Any]) -> float:
    start = time.perf_counter()
    await coro
    return time.perf_counter() - start


async def forget_run(conn: asyncpg.Connection, run_id: str) -> None:
    """Delete a run the bench published, its deliveries and its jobs."""
    run = uuid.UUID(run_id)
    await conn.execute(
        "DELETE FROM procrastinate_jobs WHERE task_name = 'deliver_batch' AND args->>'run_id' = $1",
        run_id,
    )
    await conn.execute("DELETE FROM events WHERE run_id = $1", run)  # issue 12's outbox
    await conn.execute("DELETE FROM deliveries WHERE run_id = $1", run)
    await conn.execute("DELETE FROM runs WHERE id = $1", run)
    # Its dead rows gone before the next round, as autovacuum would: they made the empty
    # database's scans the slowest in an earlier run. INDEX_CLEANUP ON: one run is about 1%
    # of the big database's partition, under the 2% of pages below which VACUUM skips the
    # indexes and leaves the dead line pointers. The heap then kept its length, the next
    # publish's COPY filled the scattered holes, and publish at 30 million took 1.1-1.5 s
    # instead of 0.2 s once its own cleanup had run before it (docs/performance.md).
    await conn.execute("VACUUM (INDEX_CLEANUP ON) deliveries, runs, procrastinate_jobs")


async def publish_round(
    conn: asyncpg.Connection, client: httpx.AsyncClient, url: str, payload: bytes
) -> tuple[float, float]:
    copy = await baseline_copy(conn, 100_000)
    start = time.perf_counter()
    response = await client.post(url, content=payload)
    took = time.perf_counter() - start
    assert response.status_code == 202, response.text[:300]
    await forget_run(conn, response.json()["id"])
    return copy, took


async def deliver_round(conn: asyncpg.Connection, client: httpx.AsyncClient, url: str) -> float:
    response = await client.post(url, content=body(20_000))
    assert response.status_code == 202, response.text[:300]
    run_id = response.json()["id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        row = await conn.fetchrow(
            "SELECT status, completed_at - started_at AS took FROM runs WHERE id = $1",
            uuid.UUID(run_id),
        )
        if row["status"] == "completed":
            await forget_run(conn, run_id)
            return float(row["took"].total_seconds())
        await asyncio.sleep(0.05)
    raise SystemExit("the 20,000 run was not delivered in 5 minutes")


async def probe_runs(conn: asyncpg.Connection, client: httpx.AsyncClient, url: str) -> str:
    """A completed 100,000-recipient run (listed) and a running 20,000 one (seen by the
    ops views), published through the API and settled by SQL; kept at every size."""
    listed = (await client.post(url, content=body(100_000))).json()["id"]
    running = (await client.post(url, content=body(20_000))).json()["id"]
    await conn.execute("DELETE FROM procrastinate_jobs WHERE task_name = 'deliver_batch'")
    await conn.execute(
        """
        UPDATE deliveries SET status = CASE WHEN position % 200 = 7 THEN 'failed' ELSE 'sent' END,
               attempts = 1, last_error = CASE WHEN position % 200 = 7 THEN '550 no such user' END,
               updated_at = now()
        WHERE run_id = $1
        """,
        uuid.UUID(listed),
    )
    await conn.execute(
        """UPDATE runs SET status = 'completed', sent_count = 99500, failed_count = 500,
               started_at = now(), completed_at = now() WHERE id = $1""",
        uuid.UUID(listed),
    )
    await conn.execute(
        """UPDATE deliveries SET status = 'sent', attempts = 1, updated_at = now()
           WHERE run_id = $1 AND position < 10000""",
        uuid.UUID(running),
    )
    await conn.execute(
        """UPDATE runs SET status = 'running', sent_count = 10000, started_at = now()
           WHERE id = $1""",
        uuid.UUID(running),
    )
    return listed


@dataclass
class Target:
    """One size: its own database, web process and probe runs."""

    size: int
    url: str
    conn: asyncpg.Connection
    web: subprocess.Popen[bytes]
    client: httpx.AsyncClient
    campaign_id: str = ""
    listed: str = ""
    figures: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.figures.setdefault(name, []).append(value)

    @property
    def publish_url(self) -> str:
        return f"/v1/messaging/campaigns/{self.campaign_id}/publish"


def start_web(url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url, "JWT_SECRET": SECRET, "LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.http.asgi:web", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--no-access-log", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )  # fmt: skip


async def open_target(size: int, index: int) -> Target:
    url = f"{DATABASE_URL}_{index}"
    port = PORT + index
    await prepare_database(url)
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE bench_copy (LIKE deliveries INCLUDING ALL)")
    web = start_web(url, port)
    headers = {"Authorization": f"Bearer {token()}", "Content-Type": "application/json"}
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120)
    target = Target(size, url, conn, web, client)
    await wait_ready(client)
    campaign = {"brand_id": "bench", "name": "growth", "channel": "email", "subject": "s"}
    created = await client.post("/v1/messaging/campaigns", json={**campaign, "body": "b"})
    target.campaign_id = created.json()["id"]
    await client.post(f"/v1/messaging/campaigns/{target.campaign_id}/activate")
    target.listed = await probe_runs(conn, client, target.publish_url)
    if size:
        took = await fill(conn, uuid.UUID(target.campaign_id), size)
        print(f"filled {size:,} rows in {took:.0f} s", flush=True)
    await settle(conn)
    return target


async def close_target(target: Target, keep: bool) -> None:
    target.web.terminate()
    target.web.wait()
    await target.client.aclose()
    await target.conn.close()
    if not keep:
        await drop_database(target.url)


def in_turn(targets: list[Target], round_: int) -> list[Target]:
    """The sizes in order in even rounds, in reverse in odd ones: no size always comes right
    after the same other's work (a big database's cleanup VACUUM, say)."""
    return targets if round_ % 2 == 0 else targets[::-1]


async def publish_rounds(targets: list[Target], repeat: int) -> None:
    payload = body(100_000)
    for target in targets:  # warm up every path once
        await target.conn.execute("TRUNCATE bench_copy")
        await publish_round(target.conn, target.client, target.publish_url, payload)
    for round_ in range(repeat):
        for target in in_turn(targets, round_):
            copy, took = await publish_round(
                target.conn, target.client, target.publish_url, payload
            )
            target.add("COPY 100,000 (baseline)", copy)
            target.add("publish 100,000 (to 202)", took)


async def delivery_rounds(targets: list[Target], repeat: int) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "jobs.worker"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": target.url, "LOG_LEVEL": "INFO"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for target in targets
    ]
    try:
        for round_ in range(repeat):
            for target in in_turn(targets, round_):
                took = await deliver_round(target.conn, target.client, target.publish_url)
                target.add("deliver 20,000 (log)", took)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait()


async def read_rounds(targets: list[Target], repeat: int) -> None:
    for round_ in range(repeat + 1):  # the first round warms up and is not counted
        for target in in_turn(targets, round_):
            listing = (
                f"{target.publish_url.removesuffix('/publish')}/runs/{target.listed}/deliveries"
            )
            # As the API binds it: the listing and the token's brands (bench.publish.token).
            listing_key = listing_of(["*"], "deliveries", target.listed, None)
            deep = encode_cursor(cursor_key(SECRET), listing_key, (89_999,))
            for name, cursor in (("listing, first page", None), ("listing, page at 90,000", deep)):
                params = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
                start = time.perf_counter()
                response = await target.client.get(listing, params=params)
                took = time.perf_counter() - start
                assert response.status_code == 200, response.text[:300]
                assert len(response.json()["items"]) == PAGE
                if round_:
                    target.add(name, took)
            for name, sql in OPS_QUERIES.items():
                args = (uuid.UUID(target.listed),) if "$1" in sql else ()
                took = await timed(target.conn.fetch(sql, *args))
                if round_:
                    target.add(name, took)


async def table_size(conn: asyncpg.Connection) -> tuple[int, int]:
    row = await conn.fetchrow(
        """
        SELECT sum(pg_total_relation_size(c.oid))::bigint AS bytes,
               sum(greatest(c.reltuples, 0))::bigint AS estimated_rows
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'deliveries'::regclass
        """
    )
    return row["bytes"], row["estimated_rows"]


def report(targets: list[Target], disk: dict[int, tuple[int, int]], rounds: str) -> None:
    print(f"\nmedians of interleaved rounds ({rounds}); {os.cpu_count()} cores")
    print("| figure | " + " | ".join(f"{t.size:,} rows" for t in targets) + " | last / first |")
    print("|" + " --- |" * (len(targets) + 2))
    for name in targets[0].figures:
        medians = [statistics.median(t.figures[name]) for t in targets]
        cells = " | ".join(f"{m * 1000:.2f} ms" for m in medians)
        print(f"| {name} | {cells} | {medians[-1] / medians[0]:.2f}x |")
    ratios = [
        statistics.median(t.figures["publish 100,000 (to 202)"])
        / statistics.median(t.figures["COPY 100,000 (baseline)"])
        for t in targets
    ]
    print("| publish / COPY | " + " | ".join(f"{r:.2f}x" for r in ratios) + " | |")
    for name in ("publish 100,000 (to 202)", "COPY 100,000 (baseline)"):
        rounds_ms = ("/".join(f"{v * 1000:.0f}" for v in t.figures[name]) for t in targets)
        print(f"{name}, each round (ms): " + " | ".join(rounds_ms))
    for size, (total, rows) in disk.items():
        per_million = f", {total / rows * 1_000_000 / 2**20:.0f} MiB per million" if rows else ""
        print(f"deliveries at {size:,}: {total / 2**30:.2f} GiB, ~{rows:,} rows{per_million}")


async def main(sizes: list[int], repeat: int, keep: bool) -> None:
    targets: list[Target] = []
    deliveries = max(3, repeat // 2)
    try:
        for index, size in enumerate(sizes):
            targets.append(await open_target(size, index))
        disk = {target.size: await table_size(target.conn) for target in targets}
        await publish_rounds(targets, repeat)
        await delivery_rounds(targets, deliveries)
        await read_rounds(targets, repeat * 3)
    finally:
        for target in targets:
            await close_target(target, keep)
    report(targets, disk, f"publish {repeat}, delivery {deliveries}, reads {repeat * 3}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,10000000,30000000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="leave the databases behind")
    arguments = parser.parse_args()
    asyncio.run(
        main([int(s) for s in arguments.sizes.split(",")], arguments.repeat, arguments.keep)
    )
