"""Run events: written with the status change, POSTed by real workers to a real local
receiver, signed, in order per run, retried while the receiver fails."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
from litestar.testing import AsyncTestClient

from app.core.settings import Settings, SettingsError
from app.http.asgi import create_app
from db.pool import connect
from db.runs import RunRepository
from tests.fakes.webhook import HttpSink, Reply
from tests.helpers import CAMPAIGNS, create_campaign, publish, recipients
from tests.jobs.delivery_helpers import run_status, until, work_until
from tests.jobs.processes import Workers
from tests.tokens import bearer

SECRET = "events-secret"


@pytest.fixture
def events_settings(settings, sink):
    # Windows of 2: a run of 5 goes queued -> running -> completed over three windows.
    return replace(
        settings,
        events_webhook_url=sink.url,
        events_webhook_secret=SECRET,
        events_retry_base_seconds=0.05,
        worker_concurrency=2,
    )


async def events_of(db, run_id: str) -> list:
    return await db.fetch(
        "SELECT id, type, status, attempts, last_error, job_id FROM events"
        " WHERE run_id = $1 ORDER BY seq",
        uuid.UUID(run_id),
    )


def received(sink: HttpSink, run_id: str) -> list:
    return [r for r in list(sink.requests) if r.json()["data"]["id"] == run_id]


async def all_delivered(db, run_id: str, count: int) -> bool:
    events = await events_of(db, run_id)
    return len(events) == count and all(e["status"] == "delivered" for e in events)


async def test_started_and_completed_reach_the_receiver_signed_and_in_order(
    events_settings, db, sink
):
    async with AsyncTestClient(create_app(events_settings)) as client:
        campaign = await create_campaign(client)
        run = (await publish(client, campaign["id"], {"recipients": recipients(5)})).json()

        await work_until(events_settings, lambda: all_delivered(db, run["id"], 2))
        final = (
            await client.get(f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}", headers=bearer())
        ).json()

    events = await events_of(db, run["id"])
    requests = received(sink, run["id"])
    assert [r.json()["type"] for r in requests] == ["run.started", "run.completed"]
    for request, event in zip(requests, events, strict=True):
        body = request.json()
        assert set(body) == {"id", "type", "occurred_at", "data"}
        assert body["id"] == str(event["id"])
        assert body["occurred_at"].endswith("Z")
        assert request.headers["idempotency-key"] == body["id"]
        assert request.headers["content-type"] == "application/json"
        expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-signature"] == f"sha256={expected}"
        assert event["attempts"] == 1
    started, completed = (r.json()["data"] for r in requests)
    # Each event carries the run as it was at that change; the last one is the run as it is.
    assert started["status"] == "running" and started["completed_at"] is None
    assert started["started_at"] is not None
    assert completed == final
    assert completed["status"] == "completed" and completed["sent_count"] == 5


async def test_a_receiver_answering_500_gets_the_event_again_and_never_a_later_one_first(
    events_settings, db, sink
):
    # A NUL in the answer, which PostgreSQL text cannot hold: stored replaced, and counted.
    sink.script.extend([Reply(status=500, body=b"do\x00wn")] * 3)
    async with AsyncTestClient(create_app(events_settings)) as client:
        campaign = await create_campaign(client)
        run = (await publish(client, campaign["id"], {"recipients": recipients(5)})).json()

        await work_until(events_settings, lambda: all_delivered(db, run["id"], 2))

    answered = [(r.json()["type"], r.status) for r in received(sink, run["id"])]
    assert answered == [
        ("run.started", 500),
        ("run.started", 500),
        ("run.started", 500),
        ("run.started", 200),
        ("run.completed", 200),
    ]
    started_ids = {r.json()["id"] for r in received(sink, run["id"])[:4]}
    assert len(started_ids) == 1  # the same event, the same Idempotency-Key, every time
    started, completed = await events_of(db, run["id"])
    assert (started["attempts"], completed["attempts"]) == (4, 1)
    assert started["last_error"].startswith("HTTP 500") and "do\ufffdwn" in started["last_error"]


async def test_an_unreachable_receiver_is_retried_for_the_retry_window_then_listed(
    events_settings, db, sink
):
    sink.default = Reply(status=503)
    settings = replace(events_settings, events_retry_hours=72, events_retry_base_seconds=3600)
    async with AsyncTestClient(create_app(settings)) as client:
        campaign = await create_campaign(client)
        run = (await publish(client, campaign["id"], {"recipients": recipients(1)})).json()
    run_id = uuid.UUID(run["id"])

    async def attempted(times: int) -> bool:
        events = await events_of(db, run["id"])
        return bool(events) and events[0]["attempts"] == times

    await work_until(settings, lambda: attempted(1))
    assert await run_status(db, run["id"]) == "completed"
    (event,) = await events_of(db, run["id"])
    assert event["type"] == "run.completed"  # one window: queued -> completed
    view = await db.fetchrow("SELECT * FROM ops_undelivered_events WHERE run_id = $1", run_id)
    assert (view["event_id"], view["job_status"], view["attempts"]) == (event["id"], "todo", 1)
    assert view["next_attempt_at"] is not None  # backing off: an hour +-50%
    assert view["last_error"].startswith("HTTP 503")

    # A day later, the receiver still down: tried again, and again later.
    await db.execute(
        "UPDATE events SET occurred_at = now() - interval '25 hours' WHERE run_id = $1", run_id
    )
    await db.execute(
        "UPDATE procrastinate_jobs SET scheduled_at = now() WHERE id = $1", event["job_id"]
    )
    await work_until(settings, lambda: attempted(2))
    view = await db.fetchrow("SELECT * FROM ops_undelivered_events WHERE run_id = $1", run_id)
    assert view["job_status"] == "todo"
    assert (
        view["next_attempt_at"] - view["last_attempt_at"]
    ).total_seconds() >= 1790  # 3,600 s x 2^1, capped at 1 h, -50% at worst

    # Past EVENTS_RETRY_HOURS: given up; the event stays listed, its job failed.
    await db.execute(
        "UPDATE events SET occurred_at = now() - interval '73 hours' WHERE run_id = $1", run_id
    )
    await db.execute(
        "UPDATE procrastinate_jobs SET scheduled_at = now() WHERE id = $1", event["job_id"]
    )
    await work_until(settings, lambda: attempted(3))
    view = await db.fetchrow("SELECT * FROM ops_undelivered_events WHERE run_id = $1", run_id)
    assert (view["job_status"], view["next_attempt_at"]) == ("failed", None)

    # The runbook's remedy once the receiver is back: retry the failed job.
    sink.default = Reply()
    await db.execute(
        "SELECT procrastinate_retry_job_v2(job_id, now(), NULL, NULL, NULL)"
        " FROM ops_undelivered_events WHERE job_status = 'failed'"
    )
    await work_until(settings, lambda: all_delivered(db, run["id"], 1))
    assert await db.fetchval("SELECT count(*) FROM ops_undelivered_events") == 0


async def test_an_expired_event_never_keeps_a_later_one_from_being_tried(events_settings, db, sink):
    """After an outage longer than EVENTS_RETRY_HOURS, run.started's own job has given up.
    The run.completed job still tries run.started once, gives it up for good (`expired`)
    and tries run.completed, then again on run.completed's own schedule."""
    sink.default = Reply(status=503)
    settings = replace(events_settings, events_retry_base_seconds=3600)
    async with AsyncTestClient(create_app(settings)) as client:
        campaign = await create_campaign(client)
        run = (await publish(client, campaign["id"], {"recipients": recipients(2)})).json()
    run_id = uuid.UUID(run["id"])
    for position in (0, 1):  # what two windows commit: running, then completed
        async with db.transaction():
            await db.execute(
                "UPDATE deliveries SET status = 'sent' WHERE run_id = $1 AND position = $2",
                run_id,
                position,
            )
            await RunRepository(db).count_outcomes(run_id, 1, 0, 0)
    started, completed = await events_of(db, run["id"])
    # run.started has been retried for 73 hours; its job gave up (failed).
    await db.execute(
        "UPDATE events SET occurred_at = now() - interval '73 hours', attempts = 40 WHERE id = $1",
        started["id"],
    )
    await db.execute(
        "UPDATE procrastinate_jobs SET status = 'failed' WHERE id = $1", started["job_id"]
    )

    async def completed_tried(times: int) -> bool:
        return (await events_of(db, run["id"]))[1]["attempts"] == times

    await work_until(settings, lambda: completed_tried(1))

    assert [(r.json()["type"], r.status) for r in received(sink, run["id"])] == [
        ("run.started", 503),
        ("run.completed", 503),
    ]
    started, completed = await events_of(db, run["id"])
    assert (started["status"], completed["status"]) == ("expired", "pending")
    view = await db.fetchrow(
        "SELECT * FROM ops_undelivered_events WHERE event_id = $1", completed["id"]
    )
    # run.completed's own backoff: 3,600 s x 2^0, +-50%, from its first attempt.
    assert view["job_status"] == "todo"
    assert (view["next_attempt_at"] - view["last_attempt_at"]).total_seconds() >= 1790
    assert (
        await db.fetchval(
            "SELECT status FROM ops_undelivered_events WHERE event_id = $1", started["id"]
        )
        == "expired"
    )

    sink.default = Reply()  # the receiver is back when run.completed's retry is due
    await db.execute(
        "UPDATE procrastinate_jobs SET scheduled_at = now() WHERE id = $1", completed["job_id"]
    )
    await work_until(settings, lambda: completed_tried(2))
    answered = [(r.json()["type"], r.status) for r in received(sink, run["id"])]
    assert answered[2:] == [("run.completed", 200)]  # run.started is never sent after it
    assert [e["status"] for e in await events_of(db, run["id"])] == ["expired", "delivered"]


async def test_cancel_sends_run_cancelled_after_run_started(events_settings, db, sink):
    async with AsyncTestClient(create_app(events_settings)) as client:
        campaign = await create_campaign(client)
        run = (await publish(client, campaign["id"], {"recipients": recipients(5)})).json()
        # What a window that sent to two recipients commits: the run is running.
        async with db.transaction():
            await db.execute(
                "UPDATE deliveries SET status = 'sent' WHERE run_id = $1 AND position < 2",
                uuid.UUID(run["id"]),
            )
            await RunRepository(db).count_outcomes(uuid.UUID(run["id"]), 2, 0, 0)
        response = await client.post(
            f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/cancel", headers=bearer()
        )
        assert response.status_code == 200

        await work_until(events_settings, lambda: all_delivered(db, run["id"], 2))

    types = [r.json()["type"] for r in received(sink, run["id"])]
    assert types == ["run.started", "run.cancelled"]
    assert received(sink, run["id"])[1].json()["data"] == response.json()


async def test_without_a_receiver_events_are_recorded_but_not_sent(settings, db):
    async with AsyncTestClient(create_app(settings)) as client:
        campaign = await create_campaign(client)
        run = (await publish(client, campaign["id"], {"recipients": recipients(1)})).json()

    async def settled() -> bool:
        events = await events_of(db, run["id"])
        return bool(events) and events[0]["status"] != "pending"

    await work_until(settings, settled)
    (event,) = await events_of(db, run["id"])
    assert (event["type"], event["status"], event["attempts"]) == ("run.completed", "unsent", 0)
    assert await db.fetchval("SELECT count(*) FROM ops_undelivered_events") == 0


async def test_a_status_change_that_rolls_back_leaves_no_event_and_no_job(settings, db):
    async with AsyncTestClient(create_app(settings)) as client:
        campaign = await create_campaign(client)
        run = (await publish(client, campaign["id"], {"recipients": recipients(3)})).json()
    run_id = uuid.UUID(run["id"])
    jobs_before = await db.fetchval("SELECT count(*) FROM procrastinate_jobs")

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        async with db.transaction():
            assert await RunRepository(db).count_outcomes(run_id, 1, 0, 0) == "running"
            raise Crash

    assert await events_of(db, run["id"]) == []
    assert await db.fetchval("SELECT count(*) FROM procrastinate_jobs") == jobs_before
    async with db.transaction():
        await RunRepository(db).count_outcomes(run_id, 1, 0, 0)
    (event,) = await events_of(db, run["id"])
    job = await db.fetchrow("SELECT * FROM procrastinate_jobs WHERE id = $1", event["job_id"])
    assert (job["task_name"], job["queue_name"], job["lock"]) == (
        "send_events",
        "events",
        f"run-events:{run_id}",  # as before events were generalised: one job of a run at a time
    )
    assert job["args"] == {"stream": f"run:{run_id}"}


async def test_windows_committing_at_once_write_one_run_started(settings, db):
    async with AsyncTestClient(create_app(settings)) as client:
        campaign = await create_campaign(client)
        run = (await publish(client, campaign["id"], {"recipients": recipients(10)})).json()
    run_id = uuid.UUID(run["id"])
    first, second = [await connect(settings.database_url) for _ in range(2)]
    try:
        # Both windows change the counters of a queued run; the second waits for the
        # first's row lock, and must then see `running`, not the `queued` of its snapshot.
        async with first.transaction():
            await RunRepository(first).count_outcomes(run_id, 1, 0, 0)
            second_window = asyncio.ensure_future(_window(second, run_id))
            await asyncio.sleep(0.2)
            assert not second_window.done()  # waiting for the row lock
        assert await second_window == "running"
    finally:
        await first.close()
        await second.close()
    assert [e["type"] for e in await events_of(db, run["id"])] == ["run.started"]


async def _window(conn, run_id: uuid.UUID) -> str | None:
    async with conn.transaction():
        return await RunRepository(conn).count_outcomes(run_id, 1, 0, 0)


@pytest.fixture
def event_workers(database_url, sink, tmp_path) -> Iterator[Workers]:
    """Worker processes that deliver with the log provider and send events to the sink."""
    workers = Workers(database_url, sink, tmp_path)
    workers.env.update(
        EMAIL_PROVIDER="log", EVENTS_WEBHOOK_URL=sink.url, EVENTS_WEBHOOK_SECRET=SECRET
    )
    yield workers
    workers.stop_all()


async def test_a_worker_killed_mid_send_loses_no_event(client, db, sink, event_workers):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(1)})).json()
    sink.default = Reply(delay=60)  # the receiver takes the POST and does not answer
    victim = event_workers.start()
    await until(lambda: len(sink.requests) == 1, seconds=30)

    victim.kill()
    await event_workers.wait_exit(victim, 5)
    (event,) = await events_of(db, run["id"])
    assert (event["status"], event["attempts"]) == ("pending", 0)

    sink.default = Reply()
    event_workers.start()  # requeues the dead worker's job (STALLED_JOB_SECONDS=2)
    await until_async(lambda: all_delivered(db, run["id"], 1), seconds=30)

    requests = received(sink, run["id"])
    assert [r.json()["id"] for r in requests] == [str(event["id"])] * 2
    for request in requests:
        assert request.headers["idempotency-key"] == str(event["id"])
        expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-signature"] == f"sha256={expected}"
    assert requests[0].body == requests[1].body


async def until_async(condition, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not await condition():  # noqa: ASYNC110 - another process works meanwhile
            await asyncio.sleep(0.1)


def test_an_events_url_needs_its_secret_and_a_day_of_retries_at_least():
    base = {"JWT_SECRET": "x"}
    with pytest.raises(SettingsError, match="EVENTS_WEBHOOK_SECRET"):
        Settings.from_env({**base, "EVENTS_WEBHOOK_URL": "https://hooks.example.com/runs"})
    with pytest.raises(SettingsError, match="EVENTS_WEBHOOK_URL"):
        Settings.from_env(
            {**base, "EVENTS_WEBHOOK_URL": "hooks.example.com", "EVENTS_WEBHOOK_SECRET": "s"}
        )
    with pytest.raises(SettingsError, match=r"EVENTS_RETRY_HOURS=.12.: Expected `int` >= 24"):
        Settings.from_env({**base, "EVENTS_RETRY_HOURS": "12"})
    configured = Settings.from_env(
        {**base, "EVENTS_WEBHOOK_URL": "https://h.example.com/", "EVENTS_WEBHOOK_SECRET": "s"}
    )
    assert (configured.events_retry_hours, configured.events_retry_base_seconds) == (72, 5.0)


async def test_a_send_run_events_job_of_the_release_before_0016_still_sends(
    events_settings, db, sink
):
    async with AsyncTestClient(create_app(events_settings)) as client:
        campaign = await create_campaign(client)
        run = (await publish(client, campaign["id"], {"recipients": recipients(1)})).json()
    run_id = uuid.UUID(run["id"])
    async with db.transaction():
        await RunRepository(db).count_outcomes(run_id, 1, 0, 0)
    (event,) = await events_of(db, run["id"])
    # The job as that release deferred it: by run, under the run's lock.
    await db.execute(
        "UPDATE procrastinate_jobs SET task_name = 'send_run_events', args = $2 WHERE id = $1",
        event["job_id"],
        {"run_id": run["id"]},
    )

    await work_until(events_settings, lambda: all_delivered(db, run["id"], 1))

    assert [r.json()["id"] for r in received(sink, run["id"])] == [str(event["id"])]
