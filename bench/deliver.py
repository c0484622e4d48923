"""Drain runs with real worker processes, beside procrastinate's own throughput for no-op
jobs and the webhook receiver's own rate under a bare client, all measured in the same run.

    python3 -m uv run --frozen python bench/deliver.py [--recipients 30000] [--rounds 3]
    python3 -m uv run --frozen python bench/deliver.py --sweep-connections 2,4,8,16,32

Needs wrk (apt-get install -y wrk), the bare client. Uses the database `messaging_bench` on
the local PostgreSQL (created and migrated if missing; BENCH_DATABASE_URL names another:
give each session its own, the bench empties its tables). Tracing off (no OTEL_* variable
reaches the workers). For each delivery scenario it empties the queue and the runs,
publishes one run with `publish_campaign` (as the web process does), starts the worker
processes (`python -m jobs.worker`, output to /dev/null) and reports messages per second
over the run's own clock (completed_at - started_at). The scenarios of a round run one
after the other in an order shuffled per round, and medians are printed at the end:
- baseline: procrastinate's stock PsycopgConnector running no-op jobs, 1 worker process;
- receiver alone: the local webhook receiver (bench/sink.py under uvicorn, its own process)
  under wrk, a C client, with as many connections as the worker keeps (requests/s);
- log provider, 1 and 2 workers (each message is a JSON log line, to /dev/null);
- log provider, 1 worker, a personalised campaign: a 500-character body with 5 variables
  of each recipient's `data` (bench/templates.py's), beside the same without (issue 24;
  `--only-template`: just those two);
- webhook provider to that receiver, 1 and 2 workers;
- the webhook provider before issue 10 (httpx, bench/httpx_webhook.py), 1 worker;
- the Twilio provider (SMS) to the same receiver, which answers its form POSTs as Twilio's
  Messages API does, 1 worker (--only-twilio: just it, the webhook's 1 worker and the
  receiver alone);
- with --before DIR, a copy of older code (git archive main | tar -x -C DIR): its worker
  with the log and webhook providers, 1 worker (--only-before: just those and this code's
  two counterparts).
With --xact-sample N, after the rounds: a run of N recipients through the webhook, 1
worker, this code (and the code before), while a sampler reads every 100 ms the age of the
oldest open transaction of the worker's connections (pg_stat_activity.xact_start; the
workers connect with application_name=bench-worker).
With --sweep-connections, the rounds are the receiver alone and the webhook provider,
1 worker, at each WEBHOOK_MAX_CONNECTIONS given. After the rounds (unless --skip-fairness),
bench/fairness.py's figures: the latency of small `high` and `normal` runs published behind
a 100,000-recipient run, beside what first-in-first-out would have made them wait, and the
adherence to a 200/s EMAIL_RATE_LIMIT over 60 s with two workers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/messaging_bench"
)
os.environ["DATABASE_URL"] = DATABASE_URL  # read by the worker processes it starts

import asyncpg  # noqa: E402
import msgspec  # noqa: E402

from app.core.settings import Settings  # noqa: E402
from app.domain.schemas import Recipient  # noqa: E402
from app.http.auth import AccessToken  # noqa: E402
from app.services.publishing import publish_campaign  # noqa: E402
from bench.publish import prepare_database  # noqa: E402
from bench.templates import BODY as TEMPLATE  # noqa: E402
from bench.templates import DATA  # noqa: E402
from db.pool import connect  # noqa: E402

NOOP_APP = ROOT / "bench" / "noop_app.py"
WORKER = ["-m", "jobs.worker"]
HTTPX_WORKER = ["-m", "bench.httpx_webhook"]  # the worker with the provider before issue 10
# What the receiver gets from the bare client: a message of the contract's shape, signed.
SAMPLE_MESSAGE = (
    '{"delivery_id":"00000000-0000-4000-8000-000000000001:1","run_id":"00000000-0000-4000-'
    '8000-000000000001","campaign_id":"00000000-0000-4000-8000-000000000002","brand_id":'
    '"bench","channel":"email","person_id":"p1","recipient":"user1@example1.com","sender":'
    '"bench@example.com","subject":"Hello","body":"Hello p1"}'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def reset(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "TRUNCATE procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs,"
        " procrastinate_workers, deliveries, runs, awaited_receipts CASCADE"
    )


async def publish(
    conn: asyncpg.Connection,
    n: int,
    batch_size: int,
    *,
    template: bool = False,
    channel: str = "email",
) -> str:
    """A run of `n` recipients of a campaign without variables; with `template`, of one
    whose body is a 500-character template with 5 variables, each recipient with its own
    `data`; `channel` "sms": to phone numbers, from a number (the Twilio scenario)."""
    if channel == "sms":
        campaign_id = await conn.fetchval(
            "INSERT INTO campaigns (brand_id, name, channel, status, body, created_by, sender)"
            " VALUES ('bench', 'bench', 'sms', 'active', 'Hello {{person_id}}', 'bench',"
            " '+15550000000') RETURNING id"
        )
    else:
        campaign_id = await conn.fetchval(
            "INSERT INTO campaigns (brand_id, name, channel, status, subject, body, created_by,"
            " sender) VALUES ('bench', 'bench', 'email', 'active', 'Hello', $1,"
            " 'bench', 'bench@example.com') RETURNING id",
            TEMPLATE if template else "Hello, it is time for your check-up.",
        )
    caller = AccessToken(exp=datetime(2099, 1, 1, tzinfo=UTC), sub="bench", brands=["*"])
    recipients = [
        Recipient(
            f"p{i}",
            f"+1555{i:07d}" if channel == "sms" else f"user{i}@example{i % 97}.com",
            data=msgspec.Raw(msgspec.json.encode(DATA | {"first_name": f"Name {i}"}))
            if template
            else None,
        )
        for i in range(n)
    ]
    run = await publish_campaign(
        conn, str(campaign_id), recipients, caller, max_recipients=n, batch_size=batch_size
    )
    return str(run.id)


TEMPLATED = "log provider, 1 worker, template"
"""The personalised scenario: 500 characters, 5 variables of each recipient's data."""
WORKER_APPLICATION = "bench-worker"
"""The application_name of the workers' connections, for the transaction sampler."""


async def oldest_transactions(samples: list[float], stop: asyncio.Event) -> None:
    """Every 100 ms, the age in seconds of the oldest open transaction among the workers'
    connections (pg_stat_activity.xact_start), appended to `samples` until `stop`."""
    conn = await connect(DATABASE_URL)
    try:
        while not stop.is_set():
            age = await conn.fetchval(
                "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)"
                " FROM pg_stat_activity WHERE application_name = $1 AND xact_start IS NOT NULL",
                WORKER_APPLICATION,
            )
            samples.append(float(age))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
    finally:
        await conn.close()


async def drain(
    conn: asyncpg.Connection,
    run_id: str,
    env: dict[str, str],
    workers: int,
    command: list[str],
    code: Path,
) -> float:
    env = {**env, "DATABASE_URL": f"{DATABASE_URL}?application_name={WORKER_APPLICATION}"}
    processes = [
        subprocess.Popen(
            [sys.executable, *command],
            cwd=code,  # python -m finds jobs.worker there first
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
                if row["sent_count"] != (await conn.fetchval("SELECT count(*) FROM deliveries")):
                    raise SystemExit(f"not every message was sent: {dict(row)}")
                return float(row["sent_count"] / row["took"].total_seconds())
            if any(process.poll() is not None for process in processes):
                raise SystemExit(f"a worker exited: {command}")
            await asyncio.sleep(0.2)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()


def noop_baseline(jobs: int) -> float:
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


def receiver_alone(url: str, connections: int, seconds: int) -> float:
    """Requests/s of the receiver under wrk (1 thread: a C client that costs the receiver
    next to nothing), POSTing a contract message as the worker does."""
    script = (
        'wrk.method = "POST"\n'
        f"wrk.body = '{SAMPLE_MESSAGE}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Idempotency-Key"] = "00000000-0000-4000-8000-000000000001:1"\n'
        'wrk.headers["X-Signature"] = "sha256=' + "0" * 64 + '"\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        result = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", lua.name, url],
            capture_output=True,
            text=True,
            check=True,
        )
    if "Non-2xx" in result.stdout or "Socket errors" in result.stdout:
        raise SystemExit(f"the receiver failed under wrk:\n{result.stdout}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    assert found, result.stdout
    return float(found[1])


class Receiver:
    """bench/sink.py under uvicorn (httptools, uvloop) in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/messages"
        self._process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "bench.sink:app"),
                *("--port", str(self.port), "--log-level", "warning", "--no-access-log"),
            ],
            cwd=ROOT,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise SystemExit("the receiver did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait()


Scenario = tuple[str, str, Callable[[], Awaitable[float]]]
"""Name, unit, and what measures it once."""


async def main(
    recipients: int,
    rounds: int,
    noop_jobs: int,
    connections: int,
    sweep: list[int],
    before: Path | None,
    fairness: bool,
    only_before: bool = False,
    xact_recipients: int = 0,
    only_template: bool = False,
    only_twilio: bool = False,
) -> None:
    if shutil.which("wrk") is None and not (only_before or only_template or only_twilio):
        raise SystemExit("needs wrk: apt-get install -y wrk")
    await prepare_database(DATABASE_URL)
    conn = await connect(DATABASE_URL)
    settings = replace(Settings(), database_url=DATABASE_URL)
    # Tracing off: the figures are those of a worker that exports nothing.
    plain = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    base_env = {**plain, "DATABASE_URL": DATABASE_URL, "LOG_LEVEL": "INFO"}
    receiver = Receiver()

    def webhook_env(max_connections: int) -> dict[str, str]:
        return {
            **base_env,
            "EMAIL_PROVIDER": "webhook",
            "WEBHOOK_URL": receiver.url,
            "WEBHOOK_SECRET": "bench",
            "WEBHOOK_MAX_CONNECTIONS": str(max_connections),
        }

    def twilio_env(max_connections: int) -> dict[str, str]:
        """SMS through the Twilio provider, to the same receiver (its Twilio answers)."""
        return {
            **base_env,
            "SMS_PROVIDER": "twilio",
            "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "TWILIO_AUTH_TOKEN": "bench",
            "TWILIO_API_URL": receiver.url.removesuffix("/messages"),
            "TWILIO_MAX_CONNECTIONS": str(max_connections),
            "PUBLIC_BASE_URL": "https://messaging.example.com",
        }

    def delivery(
        env: dict[str, str],
        workers: int,
        command: list[str] = WORKER,
        code: Path = ROOT,
        template: bool = False,
        channel: str = "email",
    ) -> Callable[[], Awaitable[float]]:
        async def measure() -> float:
            await reset(conn)
            run_id = await publish(
                conn, recipients, settings.delivery_batch_size, template=template, channel=channel
            )
            return await drain(conn, run_id, env, workers, command, code)

        return measure

    async def alone(max_connections: int) -> float:
        return receiver_alone(receiver.url, max_connections, seconds=3)

    async def baseline() -> float:
        await reset(conn)
        return noop_baseline(noop_jobs)

    scenarios: list[Scenario]
    if sweep:
        scenarios = [("receiver alone, wrk, 8 connections", "req/s", lambda: alone(8))]
        scenarios += [
            (f"webhook, 1 worker, {n} connections", "msg/s", delivery(webhook_env(n), 1))
            for n in sweep
        ]
    else:
        scenarios = [
            ("baseline: no-op jobs, 1 worker", "jobs/s", baseline),
            (
                f"receiver alone, wrk, {connections} connections",
                "req/s",
                lambda: alone(connections),
            ),
            ("log provider, 1 worker", "msg/s", delivery(base_env, 1)),
            (TEMPLATED, "msg/s", delivery(base_env, 1, template=True)),
            ("log provider, 2 workers", "msg/s", delivery(base_env, 2)),
            ("webhook (aiohttp), 1 worker", "msg/s", delivery(webhook_env(connections), 1)),
            (
                "webhook before (httpx), 1 worker",
                "msg/s",
                delivery(webhook_env(connections), 1, HTTPX_WORKER),
            ),
            ("webhook (aiohttp), 2 workers", "msg/s", delivery(webhook_env(connections), 2)),
            (
                "twilio (sms), 1 worker",
                "msg/s",
                delivery(twilio_env(connections), 1, channel="sms"),
            ),
        ]
        if only_twilio:  # the Twilio provider beside the webhook's, to the same receiver
            wrk = f"receiver alone, wrk, {connections} connections"
            keep = (wrk, "webhook (aiohttp), 1 worker", "twilio (sms), 1 worker")
            scenarios = [scenario for scenario in scenarios if scenario[0] in keep]
        if only_before:  # just the code before's scenarios and their counterparts
            keep = ("log provider, 1 worker", "webhook (aiohttp), 1 worker")
            scenarios = [scenario for scenario in scenarios if scenario[0] in keep]
        if only_template:
            keep = ("log provider, 1 worker", TEMPLATED)
            scenarios = [scenario for scenario in scenarios if scenario[0] in keep]
        if before is not None:
            scenarios += [
                (
                    "log provider, 1 worker, code before",
                    "msg/s",
                    delivery(base_env, 1, code=before),
                ),
                (
                    "webhook, 1 worker, code before",
                    "msg/s",
                    delivery(webhook_env(connections), 1, code=before),
                ),
            ]
    figures: dict[str, list[float]] = {name: [] for name, _, _ in scenarios}
    try:
        receiver.wait_ready()
        for round_number in range(1, rounds + 1):
            # A new order each round (the same in every run). In a fixed order the log
            # provider, always right after wrk, came out 17-26% below the code before's,
            # which it matches within 3% when the two alternate alone.
            order = list(scenarios)
            random.Random(round_number).shuffle(order)
            for name, unit, measure in order:
                figure = await measure()
                figures[name].append(figure)
                print(f"round {round_number}: {name:>40}: {figure:8.0f} {unit}", flush=True)
        if xact_recipients:
            codes = {"this code": ROOT, **({"code before": before} if before else {})}
            for label, code in codes.items():
                for rounds_done in range(rounds):
                    await reset(conn)
                    run_id = await publish(conn, xact_recipients, settings.delivery_batch_size)
                    samples: list[float] = []
                    stop = asyncio.Event()
                    sampler = asyncio.create_task(oldest_transactions(samples, stop))
                    try:
                        rate = await drain(conn, run_id, webhook_env(connections), 1, WORKER, code)
                    finally:
                        stop.set()
                        await sampler
                    print(
                        f"oldest worker transaction, webhook, {xact_recipients} recipients,"
                        f" {label}, round {rounds_done + 1}: max {max(samples):.3f} s,"
                        f" p99 {statistics.quantiles(samples, n=100)[98]:.3f} s,"
                        f" median {statistics.median(samples):.3f} s over {len(samples)}"
                        f" samples; {rate:.0f} msg/s",
                        flush=True,
                    )
        if fairness and not sweep:
            # Imported here: bench/fairness.py builds on this module's helpers.
            from bench.fairness import priority_and_fairness, rate_limit

            print("\npriority and fairness (bench/fairness.py), beside first-in-first-out:")
            await priority_and_fairness(conn, webhook_env(connections), 100_000, 10)
            await rate_limit(conn, webhook_env(connections), 200, 60)
    finally:
        receiver.stop()
        await conn.close()
    report(figures, {name: unit for name, unit, _ in scenarios}, recipients, rounds)


def report(
    figures: dict[str, list[float]], units: dict[str, str], recipients: int, rounds: int
) -> None:
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(f"\nmedians of {rounds} rounds ({recipients} recipients per run):")
    for name, median in medians.items():
        rounds_text = ", ".join(f"{value:.0f}" for value in figures[name])
        print(f"{name:>40}: {median:8.0f} {units[name]:6}  (rounds: {rounds_text})")
    receiver = next((name for name in medians if name.startswith("receiver alone")), None)
    print()
    for name, median in medians.items():
        if name.startswith(("webhook", "twilio")) and receiver is not None:
            ratio = median / medians[receiver]
            print(f"{name:>40}: {ratio:5.2f}x the receiver alone")
    for provider, now in (("log provider", "log provider"), ("webhook", "webhook (aiohttp)")):
        before_code = medians.get(f"{provider}, 1 worker, code before")
        if before_code:
            ratio = medians[f"{now}, 1 worker"] / before_code
            print(f"{provider + ', this code / code before':>40}: {ratio:5.2f}x")
    twilio = medians.get("twilio (sms), 1 worker")
    if twilio:
        webhook = medians["webhook (aiohttp), 1 worker"]
        print(f"{'twilio / webhook, 1 worker':>40}: {twilio / webhook:5.2f}x")
    before = medians.get("webhook before (httpx), 1 worker")
    if before:
        now = medians["webhook (aiohttp), 1 worker"]
        print(f"{'webhook, aiohttp / httpx, 1 worker':>40}: {now / before:5.2f}x")
    templated = medians.get(TEMPLATED)
    if templated:
        ratio = templated / medians["log provider, 1 worker"]
        print(f"{'log provider, template / none':>40}: {ratio:5.2f}x")
    noop = medians.get("baseline: no-op jobs, 1 worker")
    if noop:
        for name, median in medians.items():
            if name.startswith("log"):
                print(f"{name:>40}: {median / noop:5.1f}x the no-op job rate")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--noop-jobs", type=int, default=3000)
    parser.add_argument(
        "--connections",
        type=int,
        default=Settings().webhook_max_connections,
        help="WEBHOOK_MAX_CONNECTIONS of the webhook scenarios, and wrk's connections",
    )
    parser.add_argument(
        "--sweep-connections",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[],
        help="comma-separated WEBHOOK_MAX_CONNECTIONS to compare instead of the scenarios",
    )
    parser.add_argument(
        "--before",
        type=Path,
        help="a copy of the code to compare with (git archive main | tar -x -C DIR): its"
        " worker also delivers with the log and webhook providers, 1 worker, each round",
    )
    parser.add_argument(
        "--skip-fairness",
        action="store_true",
        help="leave out the priority, fairness and rate-limit figures (bench/fairness.py)",
    )
    parser.add_argument(
        "--only-before",
        action="store_true",
        help="with --before: only the log and webhook providers, 1 worker, this code and the"
        " code before",
    )
    parser.add_argument(
        "--only-template",
        action="store_true",
        help="only the log provider, 1 worker, with and without a personalised template",
    )
    parser.add_argument(
        "--xact-sample",
        type=int,
        default=0,
        metavar="RECIPIENTS",
        help="after the rounds, deliver a run of RECIPIENTS through the webhook (1 worker,"
        " --rounds times, and with the code before too) while sampling every 100 ms the"
        " oldest open transaction of the worker's connections (pg_stat_activity)",
    )
    parser.add_argument(
        "--only-twilio",
        action="store_true",
        help="only the receiver alone, the webhook provider and the Twilio provider, 1 worker",
    )
    arguments = parser.parse_args()
    asyncio.run(
        main(
            arguments.recipients,
            arguments.rounds,
            arguments.noop_jobs,
            arguments.connections,
            arguments.sweep_connections,
            arguments.before,
            not arguments.skip_fairness,
            arguments.only_before,
            arguments.xact_sample,
            arguments.only_template,
            arguments.only_twilio,
        )
    )
