"""The web process as the Procfile starts it (uvicorn), drained by SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import httpx

from tests.helpers import CAMPAIGNS, recipients
from tests.tokens import bearer
from tests.waiting import bounded, exited
from tests.web import web_process


async def test_sigterm_lets_the_request_in_flight_finish(database_url, db):
    async with web_process(database_url) as web:
        async with httpx.AsyncClient(base_url=web.url, headers=bearer(), timeout=30) as http:
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
            async with bounded("the publish's COPY seen in flight"):
                while not await db.fetchval(  # polls the other process's work
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'active' AND query LIKE 'COPY%'"
                ):
                    # Missed, if this process did not run while the COPY did.
                    assert not publishing.done(), "the publish ended before its COPY was seen"
                    await asyncio.sleep(0.005)
            web.process.send_signal(signal.SIGTERM)

            response = await publishing

        assert response.status_code == 202, response.text
        # uvicorn re-raises the signal once it has shut down cleanly.
        exit_status = await exited(web.process, 15, "the web process's exit", web.log_file)
        assert exit_status in (0, -signal.SIGTERM)
        assert await db.fetchval("SELECT count(*) FROM deliveries") == 50_000
