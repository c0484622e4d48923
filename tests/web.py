"""The web process as the Procfile starts it, for tests that need the real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.server import HOST, free_port
from tests.tokens import TEST_SECRET
from tests.waiting import PATIENCE, bounded, collector_held_off, stopped

ROOT = Path(__file__).resolve().parents[1]


async def until_ready(url: str, log: Path | None = None) -> None:
    """Wait for the web process at `url` (writing to `log`) to answer `/readyz` with 200."""
    async with (
        httpx.AsyncClient(base_url=url) as http,
        bounded(f"{url}/readyz answering 200", log=log),
    ):
        while True:
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)


async def healthz_latencies(
    http: httpx.AsyncClient, until: Callable[[], bool], waiting_for: str, pause: float = 0.01
) -> list[float]:
    """/healthz, every `pause` s until `until()` (`waiting_for` it, PATIENCE at most): how
    long each answer took."""
    latencies = []
    deadline = time.monotonic() + PATIENCE
    with collector_held_off():
        while not until():
            assert time.monotonic() < deadline, f"{waiting_for}: not within {PATIENCE:g} s"
            started = time.perf_counter()
            response = await http.get("/healthz")
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
            await asyncio.sleep(pause)
    return latencies


def web_command(
    port: int, *, http: str | None = None, env: dict[str, str] | None = None
) -> list[str]:
    """The Procfile's web line as an argv (the running Python's uvicorn, on 127.0.0.1:`port`),
    `${VAR:-default}` expanded from `env`. `http` swaps the HTTP implementation (uvicorn's
    `--http`), for comparisons."""
    env = {**os.environ, **(env or {}), "PORT": str(port)}
    line = next(
        line.split(":", 1)[1]
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line.startswith("web:")
    )
    line = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1]) or m[2], line)
    argv = shlex.split(line)
    assert argv[0] == "uvicorn", argv
    argv = [sys.executable, "-m", *argv]
    argv[argv.index("--host") + 1] = HOST
    if http is not None:
        argv[argv.index("--http") + 1] = http
    return argv


@dataclass
class WebProcess:
    """A web process started as the Procfile starts it; `log()` is what it wrote to stderr."""

    url: str
    process: Any  # asyncio.subprocess.Process
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")


@contextlib.asynccontextmanager
async def web_process(database_url: str, **env: str) -> AsyncIterator[WebProcess]:
    """The Procfile's web line on a free port, ready (`/readyz` 200) when entered."""
    port = free_port()
    env = {"DATABASE_URL": database_url, "JWT_SECRET": TEST_SECRET, **env}
    with tempfile.TemporaryDirectory() as directory:
        log_file = Path(directory, "web.log")
        with log_file.open("wb") as log:  # noqa: ASYNC230 - once, before the process starts
            process = await asyncio.create_subprocess_exec(
                *web_command(port, env=env), cwd=ROOT, env={**os.environ, **env}, stderr=log
            )
        web = WebProcess(f"http://{HOST}:{port}", process, log_file)
        try:
            await until_ready(web.url, log_file)
            yield web
        finally:
            await stopped(process, "the web process's exit on SIGTERM", log_file)
