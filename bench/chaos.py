"""The fault matrix at full size, by hand: real web and worker processes, a real webhook
receiver, faults at random instants, several rounds each.

    python3 -m uv run --frozen python bench/chaos.py [--rounds 5] [--scenario NAME ...]
        [--server postgresql://postgres@127.0.0.1:5432] [--restart-cmd "..."]

Each round uses a fresh database on `--server` (a copy of a template migrated once), one
web process (uvicorn, as the Procfile starts it), two worker processes and a threaded HTTP
receiver (tests/fakes/webhook.py) that answers in 2 to 10 ms. Clients publish runs through the
API while the fault happens. Scenarios:
- kill9: `kill -9` of one of the two workers at a random instant while it holds jobs of
  several runs; measures the time until the dead worker's jobs are back in the queue.
- sigterm: SIGTERM to a worker mid-send, a second SIGTERM 0-1 s later; started again.
- cut: every connection of web and workers terminated 5 times in 1.5 s, mid-publish and
  mid-delivery; publishes answer 202 or 503 with Retry-After.
- pg-restart: PostgreSQL restarted mid-run with `--restart-cmd` (skipped without it; use
  a cluster of your own, e.g. `pg_createcluster 15 chaos -p 5433 -- --auth=trust`, so as
  not to restart the one other work depends on); /readyz goes 503 and back.
- provider: the receiver fails for 30 s (500, 429 with Retry-After, hangs past the send
  timeout, or refuses connections, one per round in turn), then recovers.
After every round: every accepted run is completed, its counters equal its rows, every
recipient reached the receiver, no run exists that was not accepted, and repeats stay
within the sends in flight at the fault (workers hit x WORKER_JOBS x WORKER_CONCURRENCY).
Requests the receiver answered 429 are not sends (the provider refused to take them; they
spend no attempt) and are counted apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402

from tests.fakes.server import free_port  # noqa: E402
from tests.fakes.webhook import HttpSink, Reply  # noqa: E402
from tests.tokens import TEST_SECRET, bearer  # noqa: E402
from tests.web import web_command  # noqa: E402

CAMPAIGNS = "/v1/messaging/campaigns"
JOBS, CONCURRENCY, STALLED = 4, 8, 3
SCAN = STALLED / 3
WORKER_ENV = {
    "EMAIL_PROVIDER": "webhook",
    "WEBHOOK_SECRET": "chaos",
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "WORKER_JOBS": str(JOBS),
    "WORKER_CONCURRENCY": str(CONCURRENCY),
    "STALLED_JOB_SECONDS": str(STALLED),
    "DELIVERY_RETRY_BASE_SECONDS": "0.5",
    "DELIVERY_MAX_ATTEMPTS": "10",
    "LOG_LEVEL": "INFO",
}


@dataclass
class Round:
    """What one round saw."""

    accepted: set[str] = field(default_factory=set)
    refused: Counter[int] = field(default_factory=Counter)
    """Non-202 answers to publish, by status."""
    workers_hit: int = 0
    figures: dict[str, float] = field(default_factory=dict)


class Deployment:
    """web + 2 workers + a receiver on one fresh database."""

    def __init__(self, database_url: str, sink: HttpSink, logs: Path) -> None:
        self.database_url = database_url
        self.sink = sink
        self.logs = logs
        self.port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "JWT_SECRET": TEST_SECRET,
            "DELIVERY_BATCH_SIZE": "100",
            "DB_POOL_MAX_SIZE": "20",
            "WEBHOOK_URL": sink.url,
            **WORKER_ENV,
        }
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.sinks = [sink]
        """The receiver, and the one that replaced it after it refused connections."""

    def start_web(self) -> None:
        self.web = self._spawn(web_command(self.port), "web")  # as the Procfile starts it

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = self._spawn([sys.executable, "-m", "jobs.worker"], f"worker-{len(self.workers)}")
        self.workers.append(worker)
        return worker

    def _spawn(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=log)

    def worker_ids(self) -> dict[int, subprocess.Popen[bytes]]:
        """procrastinate's id of each worker process, read from its "Starting worker" line
        (a process registers anew after each restart: its last id counts)."""
        ids = {}
        for index, process in enumerate(self.workers):
            for line in (self.logs / f"worker-{index}.log").read_text().splitlines():
                if '"start_worker"' in line:
                    ids[json.loads(line)["worker"]["worker_id"]] = process
        return ids

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for process in [*self.workers, self.web]:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


@contextmanager
def deployment(database_url: str, logs: Path) -> Iterator[Deployment]:
    with HttpSink() as sink:
        sink.default = Reply(delay=random.uniform(0.002, 0.01))
        deployed = Deployment(database_url, sink, logs)
        try:
            deployed.start_web()
            deployed.start_worker()
            deployed.start_worker()
            yield deployed
        finally:
            deployed.stop()
            for replacement in deployed.sinks[1:]:
                replacement.stop()


async def wait_ready(http: httpx.AsyncClient, seconds: float = 30) -> None:
    async with asyncio.timeout(seconds):
        while True:
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


async def new_campaign(http: httpx.AsyncClient) -> str:
    body = {"brand_id": "brand-a", "name": "chaos", "channel": "email", "subject": "s",
            "body": "Hello {{person_id}}", "sender": "care@example.com"}  # fmt: skip
    campaign = (await http.post(CAMPAIGNS, json=body)).json()
    await http.post(f"{CAMPAIGNS}/{campaign['id']}/activate")
    return str(campaign["id"])


async def publish_runs(
    http: httpx.AsyncClient, campaign: str, round_: Round, *, runs: int, clients: int = 4
) -> None:
    """`clients` callers publishing `runs` runs in all, of 200 to 1,500 recipients."""

    async def caller(index: int) -> None:
        for n in range(index, runs, clients):
            size = random.randint(200, 1500)
            recipients = [
                {"person_id": f"p{i}", "recipient": f"u{i}@r{n}.example.com"} for i in range(size)
            ]
            try:
                response = await http.post(
                    f"{CAMPAIGNS}/{campaign}/publish", json={"recipients": recipients}
                )
            except httpx.TransportError:
                round_.refused[0] += 1  # no answer at all: must never happen
                continue
            if response.status_code == 202:
                round_.accepted.add(response.json()["id"])
            else:
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"] and response.json()["error"]
                round_.refused[response.status_code] += 1

    await asyncio.gather(*(caller(i) for i in range(clients)))


async def doing(db: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT id, worker_id, args->>'run_id' AS run_id FROM procrastinate_jobs"
        " WHERE status = 'doing' AND task_name = 'deliver_batch'"
    )
    return rows


async def terminate_all(db: asyncpg.Connection) -> None:
    await db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )


# Scenarios: each publishes through `http`, injects its fault, and records figures.


async def kill9(d: Deployment, http: httpx.AsyncClient, db: asyncpg.Connection, r: Round) -> None:
    campaign = await new_campaign(http)
    await publish_runs(http, campaign, r, runs=8)
    async with asyncio.timeout(60):  # a worker holding several jobs of several runs
        while True:
            runs_of: dict[int, set[str]] = {}
            for job in await doing(db):
                runs_of.setdefault(job["worker_id"], set()).add(job["run_id"])
            holders = [w for w, runs in runs_of.items() if len(runs) >= 2]
            if holders and all(w in d.worker_ids() for w in holders):
                break
            await asyncio.sleep(0.05)
    await asyncio.sleep(random.uniform(0, 0.5))
    dead = random.choice(holders)
    d.worker_ids()[dead].kill()
    killed_at = await db.fetchval("SELECT clock_timestamp()")
    # What the dead one held can no longer change.
    held = [job for job in await doing(db) if job["worker_id"] == dead]
    r.workers_hit = 1
    await asyncio.sleep(STALLED + SCAN)  # the dead one is the worker whose heartbeat stopped
    dead = await db.fetchval("SELECT id FROM procrastinate_workers ORDER BY last_heartbeat LIMIT 1")
    held = [job for job in held if job["worker_id"] == dead]
    async with asyncio.timeout(STALLED * 10):
        while True:
            back = await db.fetchval(
                "SELECT max(at) FROM procrastinate_events WHERE type = 'deferred_for_retry'"
                " AND job_id = ANY($1::bigint[]) AND at > $2 HAVING count(DISTINCT job_id) = $3",
                [j["id"] for j in held], killed_at, len(held),
            )  # fmt: skip
            if back is not None:
                break
            await asyncio.sleep(0.1)
    r.figures["jobs held by the dead"] = len(held)
    r.figures["runs held by the dead"] = len({job["run_id"] for job in held})
    r.figures["requeue s"] = (back - killed_at).total_seconds()


async def sigterm(d: Deployment, http: httpx.AsyncClient, db: asyncpg.Connection, r: Round) -> None:
    campaign = await new_campaign(http)
    await publish_runs(http, campaign, r, runs=6)
    async with asyncio.timeout(60):
        while len(d.sink.requests) < 300:
            await asyncio.sleep(0.05)
    victim = random.choice(d.workers)
    victim.send_signal(signal.SIGTERM)
    await asyncio.sleep(random.uniform(0, 1))
    victim.send_signal(signal.SIGTERM)
    started = time.monotonic()
    while victim.poll() is None:
        await asyncio.sleep(0.05)
    r.workers_hit = 1
    assert victim.returncode == 0, victim.returncode
    r.figures["stop s"] = time.monotonic() - started
    d.start_worker()


async def cut(d: Deployment, http: httpx.AsyncClient, db: asyncpg.Connection, r: Round) -> None:
    campaign = await new_campaign(http)
    await publish_runs(http, campaign, r, runs=4)  # deliveries under way when the cuts land
    publishing = asyncio.create_task(publish_runs(http, campaign, r, runs=24, clients=12))
    await asyncio.sleep(random.uniform(0, 0.3))
    for _ in range(5):
        await terminate_all(db)
        await asyncio.sleep(0.3)
    await publishing
    r.workers_hit = 5 * len(d.workers)  # each cut can roll back every window in flight
    r.figures["publishes refused (503)"] = r.refused[503]


async def pg_restart(
    d: Deployment, http: httpx.AsyncClient, db: asyncpg.Connection, r: Round, restart: str
) -> None:
    campaign = await new_campaign(http)
    await publish_runs(http, campaign, r, runs=6)
    await asyncio.sleep(random.uniform(0.2, 1.5))
    restarted = time.monotonic()
    restart_done = asyncio.create_task(
        asyncio.to_thread(subprocess.run, shlex.split(restart), check=True, capture_output=True)
    )
    statuses = []
    async with asyncio.timeout(60):  # /readyz every 100 ms: 503 while away, then 200
        while not (restart_done.done() and statuses and statuses[-1] == 200):
            try:
                status = (await http.get("/readyz", timeout=3)).status_code
            except httpx.TransportError:
                status = 0
            statuses.append(status)
            await asyncio.sleep(0.1)
    await restart_done
    assert 0 not in statuses, "the web process stopped answering"
    assert 503 in statuses, "the restart went unnoticed"
    r.workers_hit = 2
    r.figures["readyz 503 probes"] = statuses.count(503)
    r.figures["ready again s"] = time.monotonic() - restarted
    assert all(p.poll() is None for p in [d.web, *d.workers]), "a process died"


PROVIDER_FAULTS = ["500", "429", "hang", "refused"]


async def provider(
    d: Deployment, http: httpx.AsyncClient, db: asyncpg.Connection, r: Round, fault: str
) -> None:
    campaign = await new_campaign(http)
    d.sink.default = {
        "500": Reply(status=500, body=b"down"),
        "429": Reply(status=429, body=b"slow down", headers={"Retry-After": "5"}),
        "hang": Reply(delay=5),
        "refused": Reply(),
    }[fault]
    if fault == "refused":
        d.sink.stop()
    await publish_runs(http, campaign, r, runs=4)
    await asyncio.sleep(30)
    if fault == "refused":
        d.sink = HttpSink(port=d.sink.port).start()
        d.sinks.append(d.sink)
    d.sink.default = Reply(delay=0.005)
    r.figures["outage s"] = 30
    r.workers_hit = 0  # attempts, not windows, bound the repeats here


async def verify(db: asyncpg.Connection, r: Round, d: Deployment, started: float) -> dict[str, Any]:
    """Every accepted run completed and whole, and nothing reached the receiver more often
    than its attempts, but for the sends in flight where a fault hit."""
    async with asyncio.timeout(300):
        while await db.fetchval(
            "SELECT count(*) FROM runs WHERE status NOT IN ('completed', 'cancelled')"
        ):
            await asyncio.sleep(0.2)
    drained = time.monotonic() - started
    received = received_by(d)
    runs = await db.fetch(
        "SELECT r.id::text AS id, r.status, r.total_recipients AS total, r.sent_count,"
        " (SELECT count(*) FILTER (WHERE d.status = 'sent') FROM deliveries d"
        "   WHERE d.run_id = r.id) AS sent_rows,"
        " (SELECT count(*) FROM deliveries d WHERE d.run_id = r.id) AS rows FROM runs r"
    )
    assert {run["id"] for run in runs} == r.accepted, "a run exists that was not accepted"
    for run in runs:
        assert run["status"] == "completed", dict(run)
        assert run["sent_count"] == run["sent_rows"] == run["rows"] == run["total"], dict(run)
    attempts = {
        f"{row['run_id']}:{row['position']}": row["attempts"]
        for row in await db.fetch("SELECT run_id, position, attempts FROM deliveries")
    }
    missing = [delivery for delivery in attempts if received[delivery] == 0]
    assert not missing, f"{len(missing)} deliveries never reached the receiver"
    repeats = sum(times - 1 for times in received.values())
    beyond_attempts = sum(max(0, received[d] - n) for d, n in attempts.items())
    bound = r.workers_hit * JOBS * CONCURRENCY
    assert beyond_attempts <= bound, (beyond_attempts, bound)
    return {"runs": len(runs), "recipients": len(attempts), "repeats": repeats,
            "repeats beyond attempts": beyond_attempts, "in-flight bound": bound,
            "answered 429": throttled(d), "drained s": round(drained, 1)}  # fmt: skip


async def one_round(
    scenario: str, server: str, template: str, number: int, restart: str | None, logs: Path
) -> dict[str, Any]:
    name = f"messaging_chaos_{scenario.replace('-', '_')}_{number}"
    admin = await asyncpg.connect(f"{server}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    await admin.close()
    database_url = f"{server}/{name}"
    round_ = Round()
    fault = PROVIDER_FAULTS[number % len(PROVIDER_FAULTS)]
    with deployment(database_url, logs) as d:
        async with httpx.AsyncClient(base_url=d.url, headers=bearer(), timeout=60) as http:
            await wait_ready(http)
            db = await asyncpg.connect(database_url)
            started = time.monotonic()
            try:
                if scenario == "kill9":
                    await kill9(d, http, db, round_)
                elif scenario == "sigterm":
                    await sigterm(d, http, db, round_)
                elif scenario == "cut":
                    await cut(d, http, db, round_)
                elif scenario == "pg-restart":
                    assert restart is not None
                    await pg_restart(d, http, db, round_, restart)
                elif scenario == "provider":
                    await provider(d, http, db, round_, fault)
            finally:
                await db.close()
            db = await asyncpg.connect(database_url)  # the fault may have cut the first
            try:
                await wait_ready(http)
                results = await verify(db, round_, d, started)
            finally:
                await db.close()
    admin = await asyncpg.connect(f"{server}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()
    if scenario == "provider":
        results["fault"] = fault
    return {**results, **round_.figures}


def received_by(d: Deployment) -> Counter[str]:
    """Sends per delivery that the receiver took as such: a 429 is the provider refusing to
    take it, and spends no attempt (docs/adr/0046-provider-pauses.md)."""
    return Counter(
        r.json()["delivery_id"] for sink in d.sinks for r in list(sink.requests) if r.status != 429
    )


def throttled(d: Deployment) -> int:
    return sum(1 for sink in d.sinks for r in list(sink.requests) if r.status == 429)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scenario", nargs="*", default=SCENARIOS, choices=SCENARIOS)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--restart-cmd", help="restarts the PostgreSQL of --server")
    args = parser.parse_args()
    template = "messaging_chaos_template"
    admin = await asyncpg.connect(f"{args.server}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{template}"')
    await admin.close()
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = f"{args.server}/{template}"
    command.upgrade(config, "head")
    logs = ROOT / "bench" / "chaos-logs"
    for scenario in args.scenario:
        if scenario == "pg-restart" and not args.restart_cmd:
            print(f"{scenario}: skipped (no --restart-cmd)")
            continue
        rounds = []
        for number in range(args.rounds):
            round_logs = logs / f"{scenario}-{number + 1}"
            round_logs.mkdir(parents=True, exist_ok=True)
            result = await one_round(
                scenario, args.server, template, number, args.restart_cmd, round_logs
            )
            print(f"{scenario} round {number + 1}: {result}", flush=True)
            rounds.append(result)
        numeric = {k for k, v in rounds[0].items() if isinstance(v, int | float)}
        medians = {k: round(statistics.median(r[k] for r in rounds), 2) for k in sorted(numeric)}
        maxima = {k: max(r[k] for r in rounds) for k in sorted(numeric)}
        print(f"{scenario}: {len(rounds)} rounds, all completed; median {medians}; max {maxima}")


SCENARIOS = ["kill9", "sigterm", "cut", "pg-restart", "provider"]

if __name__ == "__main__":
    asyncio.run(main())
