"""1-recipient publish latency with the Procfile's HTTP protocol beside httptools.

    python3 -m uv run --frozen python bench/parsers.py [--rounds 6] [--seconds 5]

Starts two web processes from the Procfile's web line on the `messaging_bench` database
(as bench/publish.py): one as it is (`app.http.protocol:H11Protocol`, bounded heads), one
with `--http httptools` (uvicorn's default, used before issue 15). Then alternates wrk
rounds of 1-recipient publishes from 8 clients against each, so that both see the same
machine noise, and prints each round's p50/p99 and their medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.publish import (  # noqa: E402
    DATABASE_URL,
    SECRET,
    body,
    campaign,
    prepare_database,
    token,
    wait_ready,
)
from tests.fakes.server import free_port  # noqa: E402
from tests.web import web_command  # noqa: E402

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, seconds: int) -> tuple[float, float]:
    """(p50, p99) in ms of 1-recipient publishes from 8 connections."""
    script = Path(tempfile.mkdtemp()) / "publish.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{body(1).decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token()}"\n'
    )
    out = subprocess.run(
        ["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"publishes failed under load:\n{out}")

    def percentile(name: str) -> float:
        match = re.search(rf"^\s*{name}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        assert match, out
        return float(match[1]) * UNITS[match[2]]

    return percentile("50%"), percentile("99%")


async def main(rounds: int, seconds: int) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk: apt-get install -y wrk")
    await prepare_database(DATABASE_URL)
    env = {**os.environ, "DATABASE_URL": DATABASE_URL, "JWT_SECRET": SECRET, "LOG_LEVEL": "WARNING"}
    servers = {}
    for name, http in (("procfile", None), ("httptools", "httptools")):
        port = free_port()
        argv = [*web_command(port, http=http), "--log-level", "warning"]
        servers[name] = (port, subprocess.Popen(argv, cwd=ROOT, env=env))
    try:
        urls = {}
        for name, (port, _) in servers.items():
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {token()}"}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
                await wait_ready(client)
                urls[name] = f"{base}/v1/messaging/campaigns/{await campaign(client)}/publish"
        for url in urls.values():
            wrk(url, 2)  # warm up
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
        for round_ in range(rounds):
            order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
            for name in order:
                results[name].append(wrk(urls[name], seconds))
    finally:
        for _, process in servers.values():
            process.terminate()
            process.wait()

    print(f"1 recipient, 8 concurrent clients (wrk), {rounds} alternating rounds of {seconds} s")
    for name, values in results.items():
        rounds_text = "  ".join(f"{p50:.1f}/{p99:.1f}" for p50, p99 in values)
        p50 = statistics.median(v[0] for v in values)
        p99 = statistics.median(v[1] for v in values)
        print(f"{name:>10}: median p50 {p50:5.1f} ms, p99 {p99:5.1f} ms   rounds {rounds_text}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.seconds))
