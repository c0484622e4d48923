"""The one-click unsubscribe link's cost, beside /healthz measured in the same run.

    python3 -m uv run --frozen python bench/unsubscribe.py [--requests 2000] [--repeat 3]

In process: the token made and checked (valid, altered, junk), and what the worker adds to
each e-mail of a campaign with a topic (token, URL, headers), in microseconds.
Then the web process (the Procfile's web line) on a database of its own (created, migrated
and dropped again), one client, one request at a time, interleaved round by round so that
every kind sees the same machine noise:
- `GET /healthz` (the baseline: no database, no token);
- `GET` of a link (the page: the token checked, no database);
- `POST` of an altered token (404: the token checked, no database);
- `POST` of a link not used before (a new suppression, its event and the event's job);
- `POST` of a link used before (idempotent: one INSERT ... ON CONFLICT DO NOTHING);
- `PUT` of a new brand-wide suppression through the API (the same write, with a bearer
  token to check: what any new suppression costs).
Prints each kind's median and p99, and its median less the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import timeit
import uuid
from pathlib import Path

import asyncpg
import httpx
import jwt
from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core.settings import DEV_JWT_SECRET, Settings  # noqa: E402
from app.core.unsubscribe import UnsubscribeKeys, unsubscribe_link  # noqa: E402
from db.create_database import create_database  # noqa: E402
from tests.fakes.server import free_port  # noqa: E402
from tests.web import web_command  # noqa: E402

DATABASE = f"messaging_bench_unsubscribe_{os.getpid()}"
URL = f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"
SECRET = "bench-unsubscribe-key-0123456789"
BASE = "https://messaging.example"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def keys() -> UnsubscribeKeys:
    made = UnsubscribeKeys.of(Settings(public_base_url=BASE, unsubscribe_secrets=SECRET))
    assert made is not None
    return made


def token(address: str) -> str:
    return keys().token(brand_id="acme", topic="newsletter", address=address, run_id=uuid.uuid4())


def in_process() -> None:
    links = keys()
    valid = token("ann.example@example.com")
    altered = valid[:40] + ("B" if valid[40] == "A" else "A") + valid[41:]
    run_id = uuid.uuid4()
    cases = {
        "make a token": lambda: links.token(
            brand_id="acme", topic="newsletter", address="ann@example.com", run_id=run_id
        ),
        "an e-mail's link and headers": lambda: unsubscribe_link(
            links,
            brand_id="acme",
            topic="newsletter",
            channel="email",
            address="ann@example.com",
            run_id=run_id,
        ),
        "check a valid token": lambda: links.read(valid),
        "check an altered token": lambda: links.read(altered),
        "check junk (200 x 'A')": lambda: links.read("A" * 200),
    }
    for name, case in cases.items():
        runs = timeit.repeat(case, number=10_000, repeat=5)
        print(f"{name:28s} median {statistics.median(runs) / 10_000 * 1e6:6.1f} us")


async def measure(requests: int, repeat: int) -> None:
    await create_database(URL)
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = URL
    command.upgrade(config, "head")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": URL,
        "MESSAGING_DEV_MODE": "1",
        "LOG_LEVEL": "ERROR",
        "PUBLIC_BASE_URL": BASE,
        "UNSUBSCRIBE_SECRETS": SECRET,
    }
    web = await asyncio.create_subprocess_exec(
        *web_command(port), cwd=ROOT, env=env, stderr=asyncio.subprocess.DEVNULL
    )
    used = token("used@example.com")
    page = token("page@example.com")
    altered = used[:40] + ("B" if used[40] == "A" else "A") + used[41:]
    times: dict[str, list[float]] = {
        kind: [] for kind in ("healthz", "page", "altered", "new", "repeat", "api-put")
    }
    claims = {"sub": "bench", "scope": "messaging:campaigns:write", "brands": ["acme"]}
    bearer = jwt.encode({**claims, "exp": int(time.time()) + 86400}, DEV_JWT_SECRET)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for _ in range(200):
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            assert (await http.post(f"/v1/messaging/unsubscribe/{used}")).status_code == 200
            for round_ in range(repeat * requests):
                requests_of = {
                    "healthz": ("GET", "/healthz", 200),
                    "page": ("GET", f"/v1/messaging/unsubscribe/{page}", 200),
                    "altered": ("POST", f"/v1/messaging/unsubscribe/{altered}", 404),
                    "new": (
                        "POST",
                        f"/v1/messaging/unsubscribe/{token(f'u{round_}@x.example')}",
                        200,
                    ),
                    "repeat": ("POST", f"/v1/messaging/unsubscribe/{used}", 200),
                    "api-put": (
                        "PUT",
                        f"/v1/messaging/brands/acme/suppressions/p{round_}@x.example",
                        200,
                    ),
                }
                for kind, (method, path, status) in requests_of.items():
                    if kind == "api-put":
                        content = b'{"reason": "unsubscribed"}'
                        headers = {
                            "Content-Type": "application/json",
                            "Authorization": f"Bearer {bearer}",
                        }
                    else:
                        content, headers = b"List-Unsubscribe=One-Click", FORM
                    started = time.perf_counter()
                    response = await http.request(method, path, content=content, headers=headers)
                    times[kind].append(time.perf_counter() - started)
                    assert response.status_code == status, (kind, response.text)
    finally:
        web.terminate()
        await web.wait()
        admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        finally:
            await admin.close()

    baseline = statistics.median(times["healthz"])
    print(f"{len(times['healthz'])} requests of each kind, one client, one at a time")
    for kind, values in times.items():
        q = statistics.quantiles(values, n=100)
        extra = (
            "" if kind == "healthz" else f"  ({(q[49] - baseline) * 1000:+.2f} ms over /healthz)"
        )
        print(f"{kind:8s} p50 {q[49] * 1000:6.2f} ms  p99 {q[98] * 1000:6.2f} ms{extra}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    in_process()
    asyncio.run(measure(args.requests, args.repeat))
