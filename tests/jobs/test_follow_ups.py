"""Where features meet on one range of deliveries: follow-up jobs that wait while the job
before them is handed back, time slices beside backoffs, run events that cannot be
sent, and a provider asking to wait 0 s. Real workers, a real receiver."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from datetime import UTC, datetime

from litestar.testing import AsyncTestClient

from app.http.asgi import create_app
from db.queue import delivery_priority
from jobs.tasks import defer_follow_up
from jobs.worker import StopRequest, run_worker
from tests.fakes.webhook import HttpSink, Reply
from tests.helpers import create_campaign, publish, recipients
from tests.jobs.delivery_helpers import (
    assert_counters_equal_rows,
    deliveries,
    ended,
    running_worker,
)
from tests.jobs.test_quiet_hours import VirtualClock, people, quiet_campaign, utc
from tests.waiting import PATIENCE, within


async def deliver_batch_jobs(db) -> list[dict]:
    rows = await db.fetch(
        "SELECT status, scheduled_at FROM procrastinate_jobs"
        " WHERE task_name = 'deliver_batch' ORDER BY id"
    )
    return [dict(row) for row in rows]


async def test_a_follow_up_handed_back_while_its_own_follow_up_waits_loses_no_time(
    client, db, settings, sink
):
    """A follow-up job (as after a time-slice yield) holds back its New York recipients
    until 08:00 there, which defers the range's next follow-up for then; a SIGTERM hands
    the running one back. It must go back to the queue, and the Tokyo recipients must not
    wait for New York's morning."""
    settings = replace(
        settings, sms_provider="webhook", webhook_url=sink.url, webhook_secret="s",
        worker_concurrency=4, stalled_job_seconds=2,
    )  # fmt: skip
    campaign = await quiet_campaign(client)
    clock = VirtualClock.at(utc(2027, 1, 15, 8, 0))  # 03:00 in New York: quiet
    body = {"recipients": [*people(None, 4, 0), *people("Asia/Tokyo", 12, 4)]}
    run = (await publish(client, campaign["id"], body)).json()
    await db.execute("SELECT procrastinate_cancel_job_v1(id, false, true) FROM procrastinate_jobs")
    await defer_follow_up(
        db,
        datetime.now(UTC),
        delivery_priority("normal", 0),
        None,
        run_id=run["id"],
        first=0,
        last=15,
    )
    sink.default = Reply(delay=0.3)
    stop = StopRequest()
    worker = asyncio.create_task(run_worker(settings, stop=stop, clock_offset=clock.offset))
    async with asyncio.timeout(PATIENCE):
        while not (sink.requests and len(await deliver_batch_jobs(db)) == 2):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    stop.stop()  # a deploy's SIGTERM
    await within(PATIENCE, worker, "the worker's graceful stop")

    statuses = [job["status"] for job in await deliver_batch_jobs(db)]
    assert statuses == ["todo", "todo"]  # handed back, beside the one for 08:00
    async with running_worker(settings, clock_offset=clock.offset):
        async with asyncio.timeout(PATIENCE):
            while any(  # noqa: ASYNC110
                row["status"] == "pending" for row in (await deliveries(db, run["id"]))[4:]
            ):
                await asyncio.sleep(0.1)
    rows = await deliveries(db, run["id"])
    assert [row["status"] for row in rows[:4]] == ["pending"] * 4  # New York's night
    await assert_counters_equal_rows(db, run["id"])


async def test_time_slices_never_bring_a_retry_forward_of_its_backoff(client, db, settings, sink):
    settings = replace(
        settings, sms_provider="webhook", webhook_url=sink.url, webhook_secret="s",
        worker_concurrency=2, worker_jobs=2, delivery_retry_base_seconds=2.0,
        delivery_max_attempts=5,
    )  # fmt: skip
    big = await create_campaign(client, channel="sms")
    other = await create_campaign(client, channel="sms", brand="brand-b")
    sink.default = Reply(delay=0.05)
    sink.replies["+15550000000"] = Reply(status=500)  # the big run's first recipient fails
    await publish(client, big["id"], {"recipients": people(None, 400, 0)})
    async with running_worker(settings):
        for i in range(25):  # a newcomer every 0.3 s: every slice makes way for one
            newcomer = {"recipients": people(None, 1, 10_000 + i)}
            await publish(client, other["id"], newcomer, brand="brand-b")
            await asyncio.sleep(0.3)

    times = [r.received_at for r in sink.requests if r.json()["recipient"] == "+15550000000"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Backoff of 2 s x 2^(attempts-1), +-50%: at least 1 s, then 2 s, then 4 s.
    assert len(times) >= 2
    assert all(gap >= 2**k * 0.95 for k, gap in enumerate(gaps)), gaps


async def test_run_events_that_cannot_be_sent_do_not_make_deliveries_yield(db, settings):
    with HttpSink() as hooks, HttpSink() as events:
        hooks.default = Reply(delay=0.01)
        events.default = Reply(status=500)  # the events receiver is down
        settings = replace(
            settings, email_provider="webhook", webhook_url=hooks.url, webhook_secret="s",
            worker_concurrency=4, delivery_batch_size=500, events_webhook_url=events.url,
            events_webhook_secret="e", events_retry_base_seconds=60.0,
        )  # fmt: skip
        async with AsyncTestClient(create_app(settings)) as client:
            campaign = await create_campaign(client)
            small = (await publish(client, campaign["id"], {"recipients": recipients(60)})).json()
            async with running_worker(settings):
                await ended(db, small["id"])  # its events wait out their backoff
                await asyncio.sleep(1.5)
                big = (
                    await publish(client, campaign["id"], {"recipients": recipients(1000)})
                ).json()
                await ended(db, big["id"], seconds=60)

    started = await db.fetchval(
        "SELECT count(*) FROM procrastinate_events e JOIN procrastinate_jobs j ON j.id = e.job_id"
        " WHERE e.type = 'started' AND j.task_name = 'deliver_batch' AND j.args->>'run_id' = $1",
        big["id"],
    )
    assert started == 2  # its 2 jobs ran whole: no slice made way for the blocked events
    assert len(events.requests) >= 1


async def test_a_429_asking_to_wait_0_s_keeps_every_answer_of_the_window(
    client, db, settings, sink, caplog
):
    sink.script.append(Reply(status=429, body=b"slow down", headers={"Retry-After": "0"}))
    settings = replace(
        settings, email_provider="webhook", webhook_url=sink.url, webhook_secret="s",
        worker_concurrency=4,
    )  # fmt: skip
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(4)})).json()

    async with running_worker(settings):
        await ended(db, run["id"])

    rows = await deliveries(db, run["id"])
    assert [row["status"] for row in rows] == ["sent"] * 4
    assert all(row["provider_message_id"] for row in rows)  # no salvage lost them
    assert [row["attempts"] for row in rows] == [1] * 4  # the 429 was no attempt
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
