"""The web process as the Procfile starts it (uvicorn), drained by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx

from tests.helpers import CAMPAIGNS, recipients
from tests.servers import free_port
from tests.tokens import TEST_SECRET, bearer

ROOT = Path(__file__).resolve().parents[2]


async def test_sigterm_lets_the_request_in_flight_finish(database_url, db):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": TEST_SECRET}
    web = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "uvicorn", "app.asgi:web", "--factory", "--port", str(port)),
        *("--timeout-graceful-shutdown", "30", "--log-level", "warning"),
        cwd=ROOT,
        env=env,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=bearer(), timeout=30
        ) as http:
            async with asyncio.timeout(15):
                while True:
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
            campaign = (
                await http.post(
                    CAMPAIGNS,
                    json={
                        "brand_id": "brand-a",
                        "name": "n",
                        "channel": "email",
                        "subject": "s",
                        "body": "b",
                    },
                )
            ).json()
            await http.post(f"{CAMPAIGNS}/{campaign['id']}/activate")
            # A publish big enough to be in flight when the signal lands.
            publishing = asyncio.create_task(
                http.post(
                    f"{CAMPAIGNS}/{campaign['id']}/publish",
                    json={"recipients": recipients(50_000)},
                )
            )
            while not await db.fetchval(  # noqa: ASYNC110 - polls the other process's work
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'active' AND query LIKE 'COPY%'"
            ):
                await asyncio.sleep(0.005)
            web.send_signal(signal.SIGTERM)

            response = await publishing

        assert response.status_code == 202, response.text
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert await asyncio.wait_for(web.wait(), 15) in (0, -signal.SIGTERM)
        assert await db.fetchval("SELECT count(*) FROM deliveries") == 50_000
    finally:
        if web.returncode is None:
            web.kill()
            await web.wait()
