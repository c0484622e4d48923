"""Real worker processes (`python -m jobs.worker`) for tests, and what reached their
webhook receiver."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.fakes.webhook import HttpSink
from tests.waiting import GONE, bounded, exited
from tests.web import ROOT

CONCURRENCY = 4
STALLED = 2  # STALLED_JOB_SECONDS of these workers


class Workers:
    """Starts `python -m jobs.worker` processes on the test database, emails sent to `sink`;
    `env` sets variables beside these tests' own (a None unsets one: the setting's default)."""

    def __init__(
        self, database_url: str, sink: HttpSink, tmp_path: Path, **env: str | None
    ) -> None:
        variables: dict[str, str | None] = {
            **os.environ,
            "DATABASE_URL": database_url,
            "EMAIL_PROVIDER": "webhook",
            "WEBHOOK_URL": sink.url,
            "WEBHOOK_SECRET": "s",
            "WORKER_CONCURRENCY": str(CONCURRENCY),
            "STALLED_JOB_SECONDS": str(STALLED),
            "DELIVERY_RETRY_BASE_SECONDS": "0.05",
            "LOG_LEVEL": "INFO",
            **env,
        }
        self.env = {name: value for name, value in variables.items() if value is not None}
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, module: str = "jobs.worker", *args: str) -> subprocess.Popen[bytes]:
        """`module` instead of the worker: one that runs it with a twist (its `args`)."""
        with (self.tmp_path / f"worker-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    async def start_ready(self, seconds: float = 60) -> subprocess.Popen[bytes]:
        """Start a worker and wait until it LISTENs for jobs: a run published from then on
        is announced to it at once (before, it would be found by a poll a second later, or
        drained by another worker first)."""
        process = self.start()
        index = len(self.processes) - 1
        log = self.tmp_path / f"worker-{index}.log"
        async with bounded(f"worker {index} listening for jobs", seconds, log):
            while "listening for jobs" not in self.log(index):
                if process.poll() is not None:
                    raise RuntimeError(f"worker {index} exited: {self.log(index)[-3000:]}")
                await asyncio.sleep(0.05)
        return process

    async def wait_exit(self, process: subprocess.Popen[bytes], seconds: float) -> int:
        """The exit status of a worker, which must exit within `seconds` (else it is killed,
        and the test fails with the end of its log)."""
        index = self.processes.index(process)
        log = self.tmp_path / f"worker-{index}.log"
        return await exited(process, seconds, f"the exit of worker {index}", log)

    def log(self, index: int) -> str:
        return (self.tmp_path / f"worker-{index}.log").read_text()

    def logs(self) -> str:
        """Every worker's log, one after the other."""
        return "".join(self.log(index) for index in range(len(self.processes)))

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(GONE)


def delivery_ids(sink: HttpSink) -> Counter[str]:
    """How often each delivery reached the receiver; every request must carry the
    delivery id as its Idempotency-Key."""
    for request in sink.requests:
        assert request.headers["idempotency-key"] == request.json()["delivery_id"]
    return Counter(request.json()["delivery_id"] for request in list(sink.requests))
