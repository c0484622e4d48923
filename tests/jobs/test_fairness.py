"""The order in which a real worker takes the jobs of several runs: every job of a higher
campaign priority first, and the runs of one priority in turns (round-robin), whatever
their size and brand."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.http.asgi import create_app
from tests.fakes.webhook import HttpSink, Reply
from tests.helpers import CAMPAIGNS, create_campaign, publish, recipients
from tests.jobs.delivery_helpers import (
    assert_counters_equal_rows,
    deliver_until_ended,
    ended,
    run_status,
    running_worker,
    until,
)
from tests.tokens import bearer


@pytest.fixture
def one_job_at_a_time(settings):
    """Jobs of 50 deliveries, taken one at a time: the order shows in the job events."""
    return replace(settings, delivery_batch_size=50, worker_jobs=1)


@pytest.fixture
async def small_jobs_client(one_job_at_a_time) -> AsyncIterator[Any]:
    async with AsyncTestClient(create_app(one_job_at_a_time)) as client:
        yield client


async def active_campaign(client: Any, *, priority: str, brand: str) -> str:
    campaign = await create_campaign(client, brand=brand, activate=False)
    url, headers = f"{CAMPAIGNS}/{campaign['id']}", bearer(brands=[brand])
    response = await client.patch(url, json={"priority": priority}, headers=headers)
    assert response.status_code == 200 and response.json()["priority"] == priority
    assert (await client.post(f"{url}/activate", headers=headers)).status_code == 200
    return str(campaign["id"])


async def run_of(client: Any, campaign_id: str, n: int, brand: str) -> str:
    response = await publish(client, campaign_id, {"recipients": recipients(n)}, brand=brand)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def started_runs(db: Any) -> list[str]:
    """The run of each deliver_batch job, in the order the worker started them."""
    rows = await db.fetch(
        "SELECT j.args->>'run_id' AS run_id FROM procrastinate_events e"
        " JOIN procrastinate_jobs j ON j.id = e.job_id"
        " WHERE e.type = 'started' AND j.task_name = 'deliver_batch' ORDER BY e.id"
    )
    return [row["run_id"] for row in rows]


async def test_jobs_of_higher_priority_campaigns_go_first(small_jobs_client, one_job_at_a_time, db):
    client = small_jobs_client
    normal = await run_of(
        client, await active_campaign(client, priority="normal", brand="a"), 500, "a"
    )
    low = await run_of(client, await active_campaign(client, priority="low", brand="a"), 1, "a")
    high = await run_of(client, await active_campaign(client, priority="high", brand="b"), 1, "b")

    for run_id in (normal, low, high):
        await deliver_until_ended(one_job_at_a_time, db, run_id)

    assert await started_runs(db) == [high] + [normal] * 10 + [low]


async def test_runs_of_one_priority_take_turns_whatever_their_size_and_brand(
    small_jobs_client, one_job_at_a_time, db
):
    client = small_jobs_client
    big = await run_of(
        client, await active_campaign(client, priority="normal", brand="a"), 400, "a"
    )
    small = await run_of(
        client, await active_campaign(client, priority="normal", brand="b"), 150, "b"
    )
    same_brand = await run_of(
        client, await active_campaign(client, priority="normal", brand="a"), 50, "a"
    )

    for run_id in (big, small, same_brand):
        await deliver_until_ended(one_job_at_a_time, db, run_id)

    # Each run's k-th job before any run's (k+1)-th; runs published first go first.
    assert await started_runs(db) == [
        big, small, same_brand, big, small, big, small, *[big] * 5
    ]  # fmt: skip


async def test_a_run_published_behind_a_big_one_starts_within_a_time_slice(
    settings, small_jobs_client, db
):
    """One worker slot, taken by a 500-delivery job that lasts seconds: the job gives its
    slot up at its next time slice, and the newcomer runs before the big run is done."""
    with HttpSink() as sink:
        sink.default = Reply(delay=0.02)
        webhook = replace(
            settings,
            email_provider="webhook",
            webhook_url=sink.url,
            webhook_secret="s",
            worker_jobs=1,
            worker_concurrency=4,
        )
        async with AsyncTestClient(create_app(webhook)) as client:
            big = await run_of(
                client, await active_campaign(client, priority="normal", brand="a"), 500, "a"
            )
            async with running_worker(webhook):
                await until(lambda: len(sink.requests) >= 20, seconds=30)
                small = await run_of(
                    client, await active_campaign(client, priority="normal", brand="b"), 1, "b"
                )
                await ended(db, small, seconds=10)
                assert await run_status(db, big) == "running"
                await ended(db, big, seconds=60)

    small_took = await db.fetchval(
        "SELECT completed_at - created_at FROM runs WHERE id = $1", uuid.UUID(small)
    )
    big_took = await db.fetchval(
        "SELECT completed_at - started_at FROM runs WHERE id = $1", uuid.UUID(big)
    )
    # A slice is 0.5 s +-50%; the big run's sends alone take 2.5 s (500 x 20 ms over 4).
    # Compared with the big run of the same test, not with a wall-clock bound: a slower
    # machine slows both. Without time slices the newcomer would wait for the whole big
    # job, and its time would be most of the big run's.
    assert small_took < big_took / 2, (small_took, big_took)
    # The big run's job handed its range to a follow-up, which finished it.
    assert await started_runs(db) == [big, small, big]
    await assert_counters_equal_rows(db, big)
