"""Header bombs against the web process, with /healthz latency measured beside them.

    python3 -m uv run --frozen python bench/headers.py [--http h11|httptools|procfile]

Starts the web process (uvicorn; `procfile`, the default, is the Procfile's web line; the
others are that line with only `--http` changed: uvicorn's own h11 and httptools) and runs,
side by side for `--seconds`:
- `--bombers` clients, each sending one request whose `X-Bomb` header is `--header-mib`
  MiB, in 64 KiB writes, until the server answers or closes (then the next one);
- one client asking `GET /healthz` every 10 ms on its own connection.
Prints /healthz p50/p99/max, what the bombers got back and how fast, and the web process's
peak RSS. Needs no database to be up (`/healthz` does not touch it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.server import free_port  # noqa: E402
from tests.web import web_command  # noqa: E402

CHUNK = 64 * 1024


async def bomb(port: int, mib: int) -> tuple[str, float, int]:
    """One header bomb: (the status line or how it ended, seconds, bytes sent)."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    outcome = "sent whole"
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bomb: ")
        chunk = b"a" * CHUNK
        while sent < mib * 1024 * 1024:
            writer.write(chunk)
            await writer.drain()
            sent += CHUNK
            if reader.at_eof() or len(getattr(reader, "_buffer", b"")):
                break
        else:
            writer.write(b"\r\n\r\n")
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 600)
        outcome = line.decode("latin-1").strip() or "closed without an answer"
    except (ConnectionError, OSError) as exc:
        outcome = f"connection {type(exc).__name__}"
    finally:
        writer.close()
    return outcome, time.perf_counter() - started, sent


async def bombard(port: int, mib: int, until: float, results: list[tuple[str, float, int]]) -> None:
    while time.monotonic() < until:
        results.append(await bomb(port, mib))


async def probe(base: str, until: float) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        while time.monotonic() < until:
            started = time.perf_counter()
            response = await http.get("/healthz")
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
            await asyncio.sleep(0.01)
    return latencies


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def main(http: str, bombers: int, mib: int, seconds: float) -> None:
    port = free_port()
    command = web_command(port, http=None if http == "procfile" else http)
    env = {**os.environ, "MESSAGING_DEV_MODE": "1", "LOG_LEVEL": "ERROR"}
    web = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stderr=asyncio.subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http_client:
            for _ in range(100):
                try:
                    await http_client.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        quiet = await probe(base, time.monotonic() + 2)
        until = time.monotonic() + seconds
        results: list[tuple[str, float, int]] = []
        loaded, *_ = await asyncio.gather(
            probe(base, until), *(bombard(port, mib, until, results) for _ in range(bombers))
        )
        rss = peak_rss_mb(web.pid)
    finally:
        web.terminate()
        await web.wait()

    def figures(values: list[float]) -> str:
        q = statistics.quantiles(values, n=100)
        p50, p99, top = q[49] * 1000, q[98] * 1000, max(values) * 1000
        return f"p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  max {top:7.1f} ms"

    print(f"server: {' '.join(command[2:])}")
    print(f"/healthz alone ({len(quiet)} requests):          {figures(quiet)}")
    print(f"/healthz beside {bombers} x {mib} MiB header bombs ({len(loaded)}): {figures(loaded)}")
    outcomes = sorted({outcome for outcome, _, _ in results})
    durations = [seconds for _, seconds, _ in results]
    print(
        f"bombs: {len(results)}, answered {outcomes}, "
        f"median {statistics.median(durations) * 1000:.0f} ms and "
        f"{statistics.median(sent for _, _, sent in results) / 1024:.0f} KiB sent each"
    )
    print(f"web process peak RSS (VmHWM): {rss:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", choices=("procfile", "h11", "httptools"), default="procfile")
    parser.add_argument("--bombers", type=int, default=4)
    parser.add_argument("--header-mib", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.http, args.bombers, args.header_mib, args.seconds))
