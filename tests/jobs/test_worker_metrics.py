"""The worker process as the Procfile starts it: metrics port, JSON logs, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

import httpx

from tests.fakes.server import free_port
from tests.waiting import communicated

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


async def test_worker_serves_metrics_on_its_port_and_stops_on_sigterm(database_url, db):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "WORKER_METRICS_PORT": str(port),
        "LOG_LEVEL": "INFO",
    }
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jobs.worker", env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 15
        async with httpx.AsyncClient() as http:
            while True:
                try:
                    response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
                    break
                except httpx.TransportError:
                    assert worker.returncode is None, "the worker exited"
                    assert time.monotonic() < deadline, "the worker's metrics never answered"
                    await asyncio.sleep(0.1)
        assert response.status_code == 200
        assert "messaging_deliveries_total" in response.text
        assert "messaging_provider_latency_seconds" in response.text
        # Metrics start before the worker: SIGTERM once it took jobs (its handlers are set).
        while not await db.fetchval("SELECT count(*) FROM procrastinate_workers"):
            assert time.monotonic() < deadline, "the worker never registered"
            await asyncio.sleep(0.05)
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        _, stderr_bytes = await communicated(worker, 15, "the worker's exit on SIGTERM")
    stderr = stderr_bytes.decode()
    assert worker.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert any(line["message"] == f"metrics on :{port}/metrics" for line in lines), stderr
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
