"""The web process when the database fails it: every connection cut mid-publish, or every
connection busy. A request is answered 202 (and its run is whole) or 503 with the error
body and Retry-After (and nothing of it was written); none hangs without bound."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import replace

import httpx

from app.http.asgi import create_app
from tests.conftest import serving
from tests.helpers import CAMPAIGNS, create_campaign, recipients
from tests.jobs.delivery_helpers import assert_counters_equal_rows, ended, running_worker
from tests.tokens import bearer

BATCH = 50


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    body = response.json()
    assert body["error"] == "unavailable" and set(body) <= {"error", "message", "details"}


async def test_every_connection_cut_mid_publish_leaves_whole_runs_or_503s(client, db, settings):
    campaign = await create_campaign(client)
    settings = replace(settings, db_pool_max_size=40, delivery_batch_size=BATCH)
    with serving(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url, headers=bearer(), timeout=30) as http:

            async def client_publishing(i: int) -> list[httpx.Response]:
                return [
                    await http.post(
                        f"{CAMPAIGNS}/{campaign['id']}/publish",
                        json={"recipients": recipients(200, domain=f"d{i}-{n}.example.com")},
                    )
                    for n in range(6)
                ]

            clients = [asyncio.create_task(client_publishing(i)) for i in range(20)]
            for _ in range(5):  # every connection but this test's, five times in 1.5 s
                await asyncio.sleep(0.3)
                await db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            responses = [r for rs in await asyncio.gather(*clients) for r in rs]

    accepted = {r.json()["id"] for r in responses if r.status_code == 202}
    refused = [r for r in responses if r.status_code != 202]
    for response in refused:
        assert_unavailable(response)
    assert accepted and refused  # the cuts did land mid-publish
    # Nothing half-written: a run exists exactly for each 202, with all of its rows and jobs.
    runs = await db.fetch(
        "SELECT r.id, r.total_recipients,"
        " (SELECT count(*) FROM deliveries d WHERE d.run_id = r.id) AS deliveries,"
        " (SELECT count(*) FROM procrastinate_jobs j WHERE j.args->>'run_id' = r.id::text)"
        " AS jobs FROM runs r"
    )
    assert {str(run["id"]) for run in runs} == accepted
    assert {(r["total_recipients"], r["deliveries"], r["jobs"]) for r in runs} == {
        (200, 200, math.ceil(200 / BATCH))
    }
    async with running_worker(settings):
        for run_id in accepted:
            assert await ended(db, run_id, seconds=60) == "completed"
            assert await assert_counters_equal_rows(db, run_id) == {"sent": 200}


async def test_more_requests_than_connections_wait_a_bounded_time_then_get_503(
    client, db, settings
):
    campaign = await create_campaign(client)
    pool_size, timeout, extra = 3, 0.5, 4
    settings = replace(settings, db_pool_max_size=pool_size, db_pool_timeout_seconds=timeout)
    with serving(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url, headers=bearer(), timeout=30) as http:
            await http.get("/readyz")
            async with db.transaction():
                # Each publish holds its connection while it waits for this lock.
                await db.execute(
                    "SELECT 1 FROM campaigns WHERE id = $1 FOR UPDATE", uuid.UUID(campaign["id"])
                )
                started = time.monotonic()

                async def timed_publish() -> tuple[httpx.Response, float]:
                    response = await http.post(
                        f"{CAMPAIGNS}/{campaign['id']}/publish", json={"recipients": recipients(3)}
                    )
                    return response, time.monotonic() - started

                publishes = [asyncio.create_task(timed_publish()) for _ in range(pool_size + extra)]
                done: set[asyncio.Task[tuple[httpx.Response, float]]] = set()
                async with asyncio.timeout(30):
                    while len(done) < extra:
                        finished, _ = await asyncio.wait(
                            set(publishes) - done, return_when=asyncio.FIRST_COMPLETED
                        )
                        done |= finished
                # The others hold their connections, waiting for the lock: they cannot end.
                await asyncio.sleep(0.5)
                waiting = [task for task in publishes if not task.done()]
                healthz = await http.get("/healthz")
            responses = [response for response, _ in await asyncio.gather(*publishes)]

    assert len(done) == extra and len(waiting) == pool_size
    for response, seconds in (task.result() for task in done):
        assert_unavailable(response)
        # Not before the pool's timeout; after it by at most what this shared machine's
        # 2-3x swings add to a request (milliseconds), with a wide margin: a request that
        # waited for a connection instead would wait for the lock, i.e. until the end.
        assert timeout <= seconds < timeout + 5
    assert healthz.status_code == 200
    assert sorted(r.status_code for r in responses) == [202] * pool_size + [503] * extra
