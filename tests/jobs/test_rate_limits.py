"""Rate limits that two real worker processes respect together (token buckets in
PostgreSQL), and a provider's 429 that pauses every worker. Short and tolerant: the
precise figures come from bench/deliver.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.http.asgi import create_app
from db.pool import connect
from tests.fakes.webhook import HttpSink, Rendezvous, Reply
from tests.helpers import create_campaign, publish, recipients
from tests.jobs.delivery_helpers import assert_counters_equal_rows, deliveries, ended
from tests.jobs.processes import CONCURRENCY, delivery_ids
from tests.tokens import bearer
from tests.waiting import bounded, collector_held_off

LIMIT, BURST_SECONDS = 20, 0.2


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink() as sink:
        sink.default = Reply(delay=0.01)
        yield sink


BATCH = 10


@pytest.fixture
async def small_jobs(settings) -> AsyncIterator[Any]:
    """Jobs of BATCH deliveries: a run is several jobs, for two workers to share."""
    async with AsyncTestClient(create_app(replace(settings, delivery_batch_size=BATCH))) as client:
        yield client


def rate_and_busiest_second(sink: HttpSink) -> tuple[float, int]:
    """Sends per second from the moment both workers' sends had met (the rendezvous held
    the first ones until then: however long the second worker took to start, on a loaded
    machine 1-2 s, is no rate of the limiter's) to the last, and the most in any 1 s
    window of them all."""
    times = sorted(request.received_at for request in sink.requests)
    busiest = max(sum(1 for t in times if start <= t < start + 1) for start in times)
    assert sink.rendezvous is not None
    paced = [t for t in times if t >= sink.rendezvous.met_at]
    return (len(paced) - 1) / (paced[-1] - paced[0]), busiest


async def first_seen(database_url: str, query: str) -> float:
    """When (time.time()) `query` first returns a row, polled on a connection of its own."""
    conn = await connect(database_url)
    try:
        async with bounded(f"a row of {query!r}"):
            while await conn.fetchval(query) is None:  # noqa: ASYNC110 - other processes write it
                await asyncio.sleep(0.01)
        return time.time()
    finally:
        await conn.close()


async def two_workers_deliver(small_jobs, db, sink, workers, n: int, **env: str) -> str:
    """Both workers deliver the run, by construction: each runs one job at a time, both
    LISTEN before the publish, and the receiver holds the first sends until sends of a
    second job arrive (which only the other worker can be running)."""
    workers.env.update(env, WORKER_JOBS="1")
    await workers.start_ready()
    await workers.start_ready()
    sink.rendezvous = Rendezvous(lambda message: int(message["delivery_id"].split(":")[1]) // BATCH)
    campaign = await create_campaign(small_jobs)
    # The sink's threads stamp the arrivals: a collection of this process would hold them,
    # then stamp the held ones at once.
    with collector_held_off():
        run = (await publish(small_jobs, campaign["id"], {"recipients": recipients(n)})).json()
        await ended(db, run["id"])
    assert sink.rendezvous.met.is_set(), "the two workers' sends never met"
    assert all(workers.log(i).count('"chunk delivered"') for i in range(2))  # both sent
    await assert_counters_equal_rows(db, run["id"])
    return str(run["id"])


async def test_two_workers_together_keep_to_the_channel_limit(small_jobs, db, sink, workers):
    await two_workers_deliver(
        small_jobs, db, sink, workers, 120,
        EMAIL_RATE_LIMIT=str(LIMIT), RATE_LIMIT_BURST_SECONDS=str(BURST_SECONDS),
    )  # fmt: skip

    rate, busiest = rate_and_busiest_second(sink)
    assert LIMIT * 0.8 <= rate <= LIMIT * 1.1, rate
    # Counted where they arrive: a 1 s span has the sends whose tokens were taken in it
    # (the limit plus its burst), and those either worker had in flight as it began (one
    # window, WORKER_CONCURRENCY, each), however long a stall of either side held them.
    # Without a limiter: 60-120 in a second.
    assert busiest <= LIMIT + LIMIT * BURST_SECONDS + 2 * CONCURRENCY, busiest
    assert len(delivery_ids(sink)) == 120


async def test_a_brand_cap_below_the_channel_limit_is_what_holds(small_jobs, db, sink, workers):
    response = await small_jobs.put(
        "/v1/messaging/brands/brand-a/rate-limit",
        json={"email_per_second": 10, "sms_per_second": None},
        headers=bearer(),
    )
    assert response.status_code == 200

    await two_workers_deliver(small_jobs, db, sink, workers, 60, EMAIL_RATE_LIMIT="100")

    rate, busiest = rate_and_busiest_second(sink)
    assert 8 <= rate <= 11, rate
    # Burst: 0.2 s of 10/s, at least 1: 2; and each worker's window in flight (see above).
    assert busiest <= 10 + 2 + 2 * CONCURRENCY, busiest


async def test_429s_to_most_of_a_window_pause_every_worker_without_spending_attempts(
    small_jobs, db, database_url, sink, workers
):
    # The first 8 answers (two windows' worth: at least 4 to one worker however the two
    # share them): the provider as a whole asks to wait. A NUL in the answer: the pause is
    # stored all the same, the words replaced.
    sink.script.extend(
        [Reply(status=429, body=b"slow\x00down", headers={"Retry-After": "2"})] * (2 * CONCURRENCY)
    )
    pause_seen = asyncio.create_task(first_seen(database_url, "SELECT 1 FROM provider_pauses"))

    run_id = await two_workers_deliver(small_jobs, db, sink, workers, 60)

    throttled = sink.requests[0]
    assert throttled.status == 429
    pause = await db.fetchrow("SELECT * FROM provider_pauses")
    # Once the pause has committed, each worker may still finish the window it had in
    # flight (one job each: CONCURRENCY sends); then nothing reaches the provider until
    # the pause ends. Counted, not timed: without the pause the rest of the 60 would go.
    seen, until = await pause_seen, pause["until"].timestamp()
    in_pause = [r for r in sink.requests if seen < r.received_at < until - 0.05]
    assert len(in_pause) <= 2 * CONCURRENCY, len(in_pause)
    rows = await deliveries(db, run_id)
    assert {row["status"] for row in rows} == {"sent"}
    paused = {r.json()["delivery_id"] for r in sink.requests[: 2 * CONCURRENCY]}
    paused_rows = [r for r in rows if f"{run_id}:{r['position']}" in paused]
    # The 429 was no attempt, but a throttle.
    assert {(r["attempts"], r["throttles"]) for r in paused_rows} == {(1, 1)}
    assert pause["provider"] == "webhook" and pause["reason"] == "HTTP 429: slow\ufffddown"
