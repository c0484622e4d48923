"""Publish through the real HTTP server on localhost, beside a raw COPY baseline.

    python3 -m uv run --frozen python bench/publish.py [--repeat 7] [--http httptools]
    python3 -m uv run --frozen python bench/publish.py --data [--repeat 7]
    python3 -m uv run --frozen python bench/publish.py --audit [--repeat 7]

Creates (or reuses) the database `messaging_bench` on the local PostgreSQL, migrates it,
starts the web process (the Procfile's web line; `--http httptools` for the parser used
before issue 15) and measures, interleaved so that
both see the same machine noise:
- baseline: asyncpg `copy_records_to_table` of 100,000 delivery rows into a table of the
  deliveries table's shape (LIKE ... INCLUDING ALL), in one transaction;
- publish of 1, 1,000, 10,000 and 100,000 recipients, request sent to 202 received;
- publish of 100,000 recipients that each carry a `time_zone` (one of ZONES), to a
  campaign with quiet hours (issue 11);
- 1-recipient publishes from 8 concurrent clients (p50, p99);
- retry of a run of 100,000 whose 30,000 failed (POST .../retry, to 202 received), beside
  its own baseline: a publish of 30,000 recipients;
- the web process's peak RSS (VmHWM) after all of it.
No worker runs: the jobs stay queued.

With --data (issue 24), instead: 100,000 recipients each with 300 bytes of `data`, to a
campaign whose body is a 500-character template reading 5 of its variables (so every
recipient's data is checked for them), beside its baseline, a COPY of the same 100,000
rows data included (into a table of the deliveries' columns and a `data` one, the data as
JSON text made before the clock starts: one COPY where publish makes two); the publish of
the same recipients without data (to a campaign without variables); and the web process's
peak RSS.

With --audit (issue 27), instead: the publish transaction (`publish_campaign`, in this
process, on one connection) of 1, 100 and 1,000 recipients, with its audit row and without
it (NO_AUDIT_ROW: the run's INSERT carries an empty CTE instead of the row's, in this
process only), alternated call by call in rounds of ROUND_CALLS: the transaction alone, the
strictest denominator a publish has. Then publish as a client sees it (request sent to 202
received, as above), of 1 and 1,000 recipients: two web processes of this code on one
database, one of them with NO_AUDIT_ROW, requests alternated between them: the same-run
ratio that target <= 1.03x is set on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import jwt
import msgspec
from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.templates import BODY as TEMPLATE  # noqa: E402
from bench.templates import DATA  # noqa: E402
from db.create_database import create_database  # noqa: E402
from tests.web import web_command  # noqa: E402

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/messaging_bench"
)
PORT = int(os.environ.get("BENCH_PORT", "8765"))
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
BASE = f"http://127.0.0.1:{PORT}"
SIZES = (1, 1_000, 10_000, 100_000)
RETRIED, FAILED = 100_000, 30_000
ZONED = "publish 100000 with zones"
# A national brand's spread: a handful of zones, each recipient naming one.
ZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "Pacific/Honolulu",
    "America/Puerto_Rico",
)


def token() -> str:
    scopes = "messaging:campaigns:read messaging:campaigns:write messaging:campaigns:publish"
    claims = {"sub": "bench", "scope": scopes, "brands": ["*"], "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET)


def body(n: int, *, zones: bool = False) -> bytes:
    return msgspec.json.encode(
        {
            "recipients": [
                {"person_id": f"person-{i:08d}", "recipient": f"user{i}@example{i % 97}.com"}
                | ({"time_zone": ZONES[i % len(ZONES)]} if zones else {})
                for i in range(n)
            ]
        }
    )


def recipient_data(i: int) -> dict[str, str]:
    """300 bytes of JSON: the 5 variables bench/templates.py's body reads, and a note."""
    data = DATA | {"first_name": f"Name {i % 1000:03d}", "note": ""}
    data["note"] = "x" * (300 - len(msgspec.json.encode(data)))
    return data


def data_body(n: int) -> bytes:
    return msgspec.json.encode(
        {
            "recipients": [
                {
                    "person_id": f"person-{i:08d}",
                    "recipient": f"user{i}@example{i % 97}.com",
                    "data": recipient_data(i),
                }
                for i in range(n)
            ]
        }
    )


async def baseline_copy_with_data(conn: asyncpg.Connection, n: int) -> float:
    run_id = uuid.uuid4()
    records = [
        (
            run_id,
            i,
            f"person-{i:08d}",
            f"user{i}@example{i % 97}.com",
            "pending",
            None,
            msgspec.json.encode(recipient_data(i)).decode(),  # asyncpg's jsonb takes text
        )
        for i in range(n)
    ]
    start = time.perf_counter()
    async with conn.transaction():
        await conn.copy_records_to_table(
            "bench_copy",
            records=records,
            columns=("run_id", "position", "person_id", "recipient", "status", "reason", "data"),
        )
    return time.perf_counter() - start


def rows(n: int) -> list[tuple[uuid.UUID, int, str, str, str, None]]:
    run_id = uuid.uuid4()
    return [
        (run_id, i, f"person-{i:08d}", f"user{i}@example{i % 97}.com", "pending", None)
        for i in range(n)
    ]


async def baseline_copy(conn: asyncpg.Connection, n: int) -> float:
    records = rows(n)  # built before the clock starts: the baseline is the COPY alone
    start = time.perf_counter()
    async with conn.transaction():
        await conn.copy_records_to_table(
            "bench_copy",
            records=records,
            columns=("run_id", "position", "person_id", "recipient", "status", "reason"),
        )
    return time.perf_counter() - start


async def prepare_database(url: str = DATABASE_URL) -> None:
    """The bench database, created if missing and migrated to head."""
    await create_database(url)
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    command.upgrade(config, "head")


async def timed_publish(client: httpx.AsyncClient, url: str, payload: bytes) -> float:
    start = time.perf_counter()
    response = await client.post(url, content=payload)
    elapsed = time.perf_counter() - start
    if response.status_code != 202:
        raise SystemExit(f"publish failed: {response.status_code} {response.text[:300]}")
    return elapsed


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def start_web(
    http: str | None = None,
    extra_env: dict[str, str] | None = None,
    code: Path = ROOT,
    port: int = PORT,
    before: str | None = None,
) -> subprocess.Popen[bytes]:
    """The Procfile's web line; `http` swaps its HTTP implementation (see --http); `code`:
    a copy of other code to run (bench/tracing.py --before); `before`: Python the process
    runs before uvicorn starts (--audit)."""
    # Another process on the port would answer the bench instead (and receive its runs).
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise SystemExit(f"port {port} is taken: set BENCH_PORT to a free one") from None
    env = {**os.environ, "DATABASE_URL": DATABASE_URL, "JWT_SECRET": SECRET, "LOG_LEVEL": "WARNING"}
    env.update(extra_env or {})
    command = [*web_command(port, http=http), "--log-level", "warning"]
    if before is not None:  # `python -m uvicorn ...` as `python -c "...; uvicorn's main" ...`
        assert command[1:3] == ["-m", "uvicorn"], command
        start = f"{before}\nimport sys; from uvicorn.main import main; sys.exit(main())"
        command[1:3] = ["-c", start]
    return subprocess.Popen(command, cwd=code, env=env)


async def wait_ready(client: httpx.AsyncClient) -> None:
    for _ in range(100):
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("web did not become ready")


async def campaign(client: httpx.AsyncClient, quiet_hours: bool = False, body: str = "b") -> str:
    quiet = {"start": "21:00", "end": "08:00", "time_zone": ZONES[0]}
    created = await client.post(
        "/v1/messaging/campaigns",
        json={
            "brand_id": "bench",
            "name": "bench",
            "channel": "email",
            "subject": "s",
            "body": body,
        }
        | ({"quiet_hours": quiet} if quiet_hours else {}),
    )
    campaign_id: str = created.json()["id"]
    await client.post(f"/v1/messaging/campaigns/{campaign_id}/activate")
    return campaign_id


def concurrent_small(url: str, clients: int, seconds: int) -> str:
    """1-recipient publishes from `clients` connections with wrk (a C client: a Python
    client on these 2 cores would measure itself more than the server)."""
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk: apt-get install -y wrk")
    script = Path(tempfile.mkdtemp()) / "publish.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{body(1).decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token()}"\n'
    )
    result = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script), BASE + url],
        capture_output=True,
        text=True,
        check=True,
    )
    if "Non-2xx" in result.stdout:
        raise SystemExit(f"publishes failed under load:\n{result.stdout}")
    wanted = ("50%", "90%", "99%", "Requests/sec")
    return "\n".join(line for line in result.stdout.splitlines() if line.strip().startswith(wanted))


async def run_with_failures(client: httpx.AsyncClient, conn: asyncpg.Connection, url: str) -> str:
    """A run of RETRIED recipients that ended with FAILED of them failed (3 in every 10),
    as workers would leave it; its retry URL."""
    response = await client.post(url, content=body(RETRIED))
    run = response.json()
    run_id = uuid.UUID(run["id"])
    await conn.execute(
        """
        UPDATE deliveries SET attempts = 1,
            status = CASE WHEN position % 10 < 3 THEN 'failed' ELSE 'sent' END
        WHERE run_id = $1
        """,
        run_id,
    )
    await conn.execute(
        """
        UPDATE runs SET status = 'completed', started_at = now(), completed_at = now(),
            failed_count = $2, sent_count = total_recipients - $2
        WHERE id = $1
        """,
        run_id,
        FAILED,
    )
    return f"{url.removesuffix('/publish')}/runs/{run_id}/retry"


async def timed_retry(client: httpx.AsyncClient, url: str) -> float:
    start = time.perf_counter()
    response = await client.post(url)
    elapsed = time.perf_counter() - start
    if response.status_code != 202 or response.json()["total_recipients"] != FAILED:
        raise SystemExit(f"retry failed: {response.status_code} {response.text[:300]}")
    return elapsed


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


async def main(repeat: int, http: str | None) -> None:
    await prepare_database()
    conn = await asyncpg.connect(DATABASE_URL)
    await conn.execute("DROP TABLE IF EXISTS bench_copy")
    await conn.execute("CREATE TABLE bench_copy (LIKE deliveries INCLUDING ALL)")

    web = start_web(http)
    headers = {"Authorization": f"Bearer {token()}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=16)
    try:
        async with httpx.AsyncClient(
            base_url=BASE, headers=headers, timeout=60, limits=limits
        ) as client:
            await wait_ready(client)
            url = f"/v1/messaging/campaigns/{await campaign(client)}/publish"
            zoned_url = f"/v1/messaging/campaigns/{await campaign(client, True)}/publish"
            payloads = {n: body(n) for n in (*SIZES, FAILED)}
            zoned = body(100_000, zones=True)
            await timed_publish(client, zoned_url, zoned)
            retry_url = await run_with_failures(client, conn, url)
            for n in SIZES:  # warm up every path once
                await timed_publish(client, url, payloads[n])
            await timed_retry(client, retry_url)
            # Small publishes first, before the large ones leave PostgreSQL writing back.
            small = concurrent_small(url, clients=8, seconds=10)

            results: dict[str, list[float]] = (
                {"copy 100000": []}
                | {f"publish {n}": [] for n in SIZES}
                | {ZONED: []}
                | {f"publish {FAILED}": [], f"retry {FAILED}/{RETRIED}": []}
            )
            for _ in range(repeat):
                results["copy 100000"].append(await baseline_copy(conn, 100_000))
                for n in SIZES:
                    results[f"publish {n}"].append(await timed_publish(client, url, payloads[n]))
                results[ZONED].append(await timed_publish(client, zoned_url, zoned))
                # The retry (of the same original each time: it is never changed) beside
                # its baseline, a publish of as many recipients.
                publish_failed = await timed_publish(client, url, payloads[FAILED])
                results[f"publish {FAILED}"].append(publish_failed)
                results[f"retry {FAILED}/{RETRIED}"].append(await timed_retry(client, retry_url))

            rss = peak_rss_mb(web.pid)
    finally:
        web.terminate()
        web.wait()
        await conn.close()

    copy_median = statistics.median(results["copy 100000"])
    print(f"server: {' '.join(web.args[2:-2])}")
    print(f"median of {repeat} (interleaved); machine: {os.cpu_count()} cores")
    for name, values in results.items():
        median = statistics.median(values)
        ratio = f"  {median / copy_median:4.2f}x baseline" if " 100000" in name else ""
        print(f"{name:>25}: {ms(median)}  (min {ms(min(values))}, max {ms(max(values))}){ratio}")
    retry_ratio = statistics.median(results[f"retry {FAILED}/{RETRIED}"]) / statistics.median(
        results[f"publish {FAILED}"]
    )
    print(f"retry of {FAILED:,} failed of {RETRIED:,} / publish of {FAILED:,}: {retry_ratio:4.2f}x")
    print(f"1 recipient, 8 concurrent clients (wrk, 10 s):\n{small}")
    print(f"web process peak RSS (VmHWM): {rss:.0f} MB")


async def main_data(repeat: int) -> None:
    await prepare_database()
    conn = await asyncpg.connect(DATABASE_URL)
    await conn.execute("DROP TABLE IF EXISTS bench_copy")
    # The rows of deliveries with their data inside: one COPY, cheaper than publish's two
    # (deliveries, delivery_data; bench/data_erasure.py), so a strict baseline.
    await conn.execute("CREATE TABLE bench_copy (LIKE deliveries INCLUDING ALL, data jsonb)")
    web = start_web()
    headers = {"Authorization": f"Bearer {token()}", "Content-Type": "application/json"}
    n = 100_000
    try:
        async with httpx.AsyncClient(base_url=BASE, headers=headers, timeout=120) as client:
            await wait_ready(client)
            url = f"/v1/messaging/campaigns/{await campaign(client, body=TEMPLATE)}/publish"
            plain_url = f"/v1/messaging/campaigns/{await campaign(client)}/publish"
            with_data, without = data_body(n), body(n)
            await timed_publish(client, url, with_data)  # warm up every path once
            results: dict[str, list[float]] = {
                "copy 100000 with data": [],
                "publish 100000 with data": [],
                "publish 100000 without data": [],
            }
            for _ in range(repeat):
                results["copy 100000 with data"].append(await baseline_copy_with_data(conn, n))
                results["publish 100000 with data"].append(
                    await timed_publish(client, url, with_data)
                )
                results["publish 100000 without data"].append(  # to a campaign without variables
                    await timed_publish(client, plain_url, without)
                )
            rss = peak_rss_mb(web.pid)
    finally:
        web.terminate()
        web.wait()
        await conn.close()
    copy_median = statistics.median(results["copy 100000 with data"])
    print(f"median of {repeat} (interleaved); machine: {os.cpu_count()} cores")
    size = len(with_data)
    print(f"body with data: {size / 1e6:.1f} MB ({size / n:.0f} bytes a recipient)")
    for name, values in results.items():
        median = statistics.median(values)
        print(
            f"{name:>28}: {ms(median)}  (min {ms(min(values))}, max {ms(max(values))})"
            f"  {median / copy_median:4.2f}x the COPY with data"
        )
    print(f"web process peak RSS (VmHWM): {rss:.0f} MB")


AUDIT_SIZES = (1, 100, 1_000)
NO_AUDIT_ROW = "import db.runs; db.runs.audit_insert = lambda event, first: ('SELECT 1',)"
"""Python that makes this process's publishes write no audit row: the same statement with
an empty CTE (db/runs.py `create`), nothing else changed."""
HTTP_SIZES = (1, 1_000)
SYNC_MODES = {
    "on": " (as deployed: each commit waits for its WAL flush)",
    "off": " (no wait for the disk: what the audit row itself costs, the strictest ratio)",
}
ROUND_CALLS = 200
"""Publishes of each size per round, half of them with the audit row, alternated."""


@dataclass
class BenchCaller:
    """The `Caller` publish acts for (app/domain/access.py)."""

    sub: str = "bench"
    brands: list[str] = field(default_factory=lambda: ["*"])
    all_brands: bool = True

    def may_act_for(self, brand_id: str) -> bool:
        return True


async def main_audit(repeat: int) -> None:
    import app.services.publishing as publishing
    import db.runs
    from app.domain.schemas import CampaignCreate, Recipient
    from app.services.campaigns import change_status, create_campaign
    from db.pool import create_pool

    await prepare_database()
    caller = BenchCaller()
    recorded = db.runs.audit_insert
    exec(NO_AUDIT_ROW)  # the same patch as the web process without the row
    no_audit = db.runs.audit_insert
    pool = await create_pool(DATABASE_URL)
    try:
        async with pool.acquire() as conn:
            draft = CampaignCreate(brand_id="bench", name="bench", channel="email", body="b",
                                   subject="s")  # fmt: skip
            campaign = await create_campaign(conn, draft, caller)
            await change_status(conn, str(campaign.id), caller, to="active", allowed=["draft"])
            people = {
                n: [
                    Recipient(person_id=f"p{i}", recipient=f"user{i}@example.com") for i in range(n)
                ]
                for n in AUDIT_SIZES
            }

            async def timed(n: int, audit: bool) -> float:
                db.runs.audit_insert = recorded if audit else no_audit
                start = time.perf_counter()
                await publishing.publish_campaign(
                    conn, str(campaign.id), people[n], caller,
                    max_recipients=100_000, batch_size=500,
                )  # fmt: skip
                return time.perf_counter() - start

            for n in AUDIT_SIZES:  # warm up every path (and plan) once
                for audit in (True, False):
                    await timed(n, audit)
            medians: dict[tuple[str, int, bool], list[float]] = {
                (sync, n, audit): []
                for sync in SYNC_MODES
                for n in AUDIT_SIZES
                for audit in (True, False)
            }
            for _ in range(repeat):
                for sync in SYNC_MODES:
                    await conn.execute(f"SET synchronous_commit = {sync}")
                    for n in AUDIT_SIZES:
                        times: dict[bool, list[float]] = {True: [], False: []}
                        for call in range(ROUND_CALLS):
                            audit = call % 2 == 0
                            times[audit].append(await timed(n, audit))
                        for audit in (True, False):
                            medians[(sync, n, audit)].append(statistics.median(times[audit]))
            await conn.execute("RESET synchronous_commit")
            audit_rows = await conn.fetchval(
                "SELECT count(*) FROM audit_events WHERE action = 'run.published'"
            )
    finally:
        db.runs.audit_insert = recorded
        await pool.close()
    print(f"publish transaction (in process), median of {repeat} rounds of {ROUND_CALLS // 2}"
          f" calls each way, alternated; machine: {os.cpu_count()} cores")  # fmt: skip
    for sync in SYNC_MODES:
        print(f"synchronous_commit = {sync}{SYNC_MODES[sync]}")
        for n in AUDIT_SIZES:
            with_audit = statistics.median(medians[(sync, n, True)])
            without = statistics.median(medians[(sync, n, False)])
            ratios = [
                a / b
                for a, b in zip(medians[(sync, n, True)], medians[(sync, n, False)], strict=True)
            ]
            print(
                f"{n:>6} recipients: with audit {ms(with_audit)}, without {ms(without)}:"
                f" {with_audit / without:5.3f}x (rounds {min(ratios):5.3f}x to {max(ratios):5.3f}x)"
            )
    print(f"run.published rows written: {audit_rows}")
    await audit_over_http(repeat)


async def audit_over_http(repeat: int) -> None:
    servers = {True: start_web(), False: start_web(port=PORT + 1, before=NO_AUDIT_ROW)}
    headers = {"Authorization": f"Bearer {token()}", "Content-Type": "application/json"}
    ports = {True: PORT, False: PORT + 1}
    clients = {
        audit: httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60)
        for audit, port in ports.items()
    }
    try:
        urls = {}
        for audit, client in clients.items():
            await wait_ready(client)
            urls[audit] = f"/v1/messaging/campaigns/{await campaign(client)}/publish"
        payloads = {n: body(n) for n in HTTP_SIZES}
        calls = {1: ROUND_CALLS, 1_000: ROUND_CALLS // 4}
        for n in HTTP_SIZES:  # warm up
            for audit in (True, False):
                for _ in range(10):
                    await timed_publish(clients[audit], urls[audit], payloads[n])
        medians: dict[tuple[int, bool], list[float]] = {
            (n, audit): [] for n in HTTP_SIZES for audit in (True, False)
        }
        for _ in range(repeat):
            for n in HTTP_SIZES:
                times: dict[bool, list[float]] = {True: [], False: []}
                for call in range(calls[n]):
                    audit = call % 2 == 0
                    times[audit].append(
                        await timed_publish(clients[audit], urls[audit], payloads[n])
                    )
                for audit in (True, False):
                    medians[(n, audit)].append(statistics.median(times[audit]))
    finally:
        for client in clients.values():
            await client.aclose()
        for web in servers.values():
            web.terminate()
            web.wait()
    print(
        "publish over HTTP (request to 202), this code against itself with NO_AUDIT_ROW,"
        f" median of {repeat} rounds, requests alternated; target <= 1.03x"
    )
    for n in HTTP_SIZES:
        with_audit = statistics.median(medians[(n, True)])
        without = statistics.median(medians[(n, False)])
        ratios = [a / b for a, b in zip(medians[(n, True)], medians[(n, False)], strict=True)]
        print(
            f"{n:>6} recipients: with audit {ms(with_audit)}, without {ms(without)}:"
            f" {with_audit / without:5.3f}x (rounds {min(ratios):5.3f}x to {max(ratios):5.3f}x)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--data",
        action="store_true",
        help="100,000 recipients with 300 bytes of data each, beside a COPY with data",
    )
    parser.add_argument(
        "--http",
        choices=("h11", "httptools"),
        help="swap the Procfile's HTTP implementation (httptools: the one before issue 15)",
    )
    parser.add_argument(
        "--audit",
        action="store_true",
        help="the publish transaction with its audit row and without it (issue 27)",
    )
    args = parser.parse_args()
    if args.audit:
        asyncio.run(main_audit(args.repeat))
    elif args.data:
        asyncio.run(main_data(args.repeat))
    else:
        asyncio.run(main(args.repeat, args.http))
