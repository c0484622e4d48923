"""Load: 50 clients publish runs of mixed sizes for 60 s and read each one back, while two
workers deliver; then the time until every run has completed.

    python3 -m uv run --frozen python bench/load.py [--clients 50] [--seconds 60]
        [--server postgresql://postgres@127.0.0.1:5432]

A fresh database `messaging_load` on `--server` (migrated), one web process started as the
Procfile starts it (uvicorn, one process), two worker processes with the `log` provider
(their output to /dev/null). Each client loops: publish a run of 1 (60% of requests), 100
(30%) or 5,000 (10%) recipients, then GET the run. Reports recipients accepted per
second, publish latency p50/p99 per size, read-back latency, every non-2xx answer by
status, and the time from the end of the load until every accepted run is completed.
Targets: no 5xx, no request without an answer, every run completes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import asyncpg
import httpx
import msgspec
from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.server import free_port  # noqa: E402
from tests.tokens import TEST_SECRET, bearer  # noqa: E402
from tests.web import web_command  # noqa: E402

CAMPAIGNS = "/v1/messaging/campaigns"
SIZES = {1: 0.6, 100: 0.3, 5000: 0.1}


def body(size: int) -> bytes:
    recipients = [
        {"person_id": f"p{i}", "recipient": f"u{i}@load.example.com"} for i in range(size)
    ]
    return msgspec.json.encode({"recipients": recipients})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def prepare(server: str) -> str:
    name = "messaging_load"
    admin = await asyncpg.connect(f"{server}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = f"{server}/{name}"
    command.upgrade(config, "head")
    return f"{server}/{name}"


def start(database_url: str, port: int) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "JWT_SECRET": TEST_SECRET,
        "LOG_LEVEL": "WARNING",
        "DB_POOL_MAX_SIZE": "20",
    }
    web = [*web_command(port), "--log-level", "warning"]  # as the Procfile starts it
    log = (ROOT / "bench" / "load-web.log").open("wb")
    processes = [subprocess.Popen(web, cwd=ROOT, env=env, stdout=log, stderr=log)]
    for _ in range(2):
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "jobs.worker"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return processes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    database_url = await prepare(args.server)
    port = free_port()
    processes = start(database_url, port)
    bodies = {size: body(size) for size in SIZES}
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: Counter[int] = Counter()
    accepted: list[str] = []
    recipients_accepted = 0
    no_answer = 0
    closed_keep_alive = 0
    headers = {**bearer(), "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=args.clients)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120, limits=limits
        ) as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.2)
            campaign = {"brand_id": "brand-a", "name": "load", "channel": "email",
                        "subject": "s", "body": "b", "sender": "care@example.com"}  # fmt: skip
            campaign_id = (await http.post(CAMPAIGNS, json=campaign)).json()["id"]
            await http.post(f"{CAMPAIGNS}/{campaign_id}/activate")
            deadline = time.monotonic() + args.seconds

            async def client() -> None:
                nonlocal recipients_accepted, no_answer, closed_keep_alive
                while time.monotonic() < deadline:
                    size = random.choices(list(SIZES), weights=list(SIZES.values()))[0]
                    started = time.perf_counter()
                    try:
                        response = await http.post(
                            f"{CAMPAIGNS}/{campaign_id}/publish", content=bodies[size]
                        )
                    except httpx.TransportError as exc:
                        print(f"publish without an answer: {exc!r}")
                        no_answer += 1
                        continue
                    latencies[f"publish {size}"].append(time.perf_counter() - started)
                    statuses[response.status_code] += 1
                    if response.status_code != 202:
                        continue
                    run = response.json()
                    accepted.append(run["id"])
                    recipients_accepted += size
                    started = time.perf_counter()
                    try:
                        read = await http.get(response.headers["Location"])
                    except httpx.ReadError:
                        # A kept-alive connection the server closed just as this GET went
                        # out on it (uvicorn closes idle ones after 5 s): GET is safe to send
                        # again, as any HTTP client would.
                        closed_keep_alive += 1
                        read = await http.get(response.headers["Location"])
                    latencies["read back"].append(time.perf_counter() - started)
                    statuses[read.status_code] += 1

            load_started = time.monotonic()
            await asyncio.gather(*(client() for _ in range(args.clients)))
            load_seconds = time.monotonic() - load_started
        ended = time.monotonic()
        db = await asyncpg.connect(database_url)
        try:
            async with asyncio.timeout(600):
                while await db.fetchval(
                    "SELECT count(*) FROM runs WHERE status NOT IN ('completed', 'cancelled')"
                ):
                    await asyncio.sleep(0.2)
            drained = time.monotonic() - ended
            completed = await db.fetchval("SELECT count(*) FROM runs WHERE status = 'completed'")
        finally:
            await db.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()

    print(f"{args.clients} clients for {load_seconds:.0f} s; {len(accepted)} runs accepted")
    print(
        f"recipients accepted: {recipients_accepted} ({recipients_accepted / load_seconds:,.0f}/s)"
    )
    for name in sorted(
        latencies, key=lambda n: (n.split()[0], int(n.split()[-1]) if n[-1].isdigit() else 0)
    ):
        values = latencies[name]
        print(
            f"{name:>14}: n={len(values):5d} p50={1000 * statistics.median(values):7.1f} ms"
            f" p99={1000 * percentile(values, 0.99):7.1f} ms"
        )
    print(f"answers by status: {dict(sorted(statuses.items()))}; without an answer: {no_answer};")
    print(f"GETs sent again on a new connection (a kept-alive one closed): {closed_keep_alive}")
    print(
        f"every run completed {drained:.1f} s after the load ended: {completed} of {len(accepted)}"
    )
    fives = sum(n for status, n in statuses.items() if status >= 500)
    assert fives == 0 and no_answer == 0 and completed == len(accepted)


if __name__ == "__main__":
    asyncio.run(main())
