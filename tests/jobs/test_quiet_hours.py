"""Quiet hours delivered by real workers to the real HTTP receiver, on a controlled clock.

The workers' clock is the database's now() plus an offset (WorkerResources.clock_offset),
so a test sets "now" to any instant, such as the night New York springs forward. Jobs
that wait in the queue are due by the database's real clock, at (virtual instant -
offset). Moving the clock forward (`VirtualClock.jump_to`) is therefore done for the whole
system at once: workers restart with the new offset, and every job waiting in the queue
becomes due that much sooner, as if that time had passed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from db.queue import delivery_priority
from jobs.tasks import defer_follow_up
from tests.fakes.webhook import HttpSink, Reply
from tests.helpers import CAMPAIGNS, create_campaign, publish
from tests.jobs.delivery_helpers import (
    assert_counters_equal_rows,
    drain,
    ended,
    run_status,
    running_worker,
)
from tests.tokens import bearer
from tests.waiting import killed, stopped
from tests.web import ROOT

NIGHT = {"start": "21:00", "end": "08:00", "time_zone": "America/New_York"}
ON_TIME = timedelta(seconds=30)
"""Workers poll every second: a delivery whose wait ends goes within that and a window.
The room is for a loaded machine, where any step may be delayed for seconds; the late
deliveries these tests guard against are 100 s (a backoff) to an hour (a wrong offset)
out. No test waits for it. (Nothing early is what these tests are about: that bound is
exact.)"""


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@dataclass
class VirtualClock:
    offset: timedelta

    @classmethod
    def at(cls, moment: datetime) -> VirtualClock:
        return cls(moment - datetime.now(UTC))

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def of(self, real: float) -> datetime:
        """The virtual instant of a real time.time()."""
        return datetime.fromtimestamp(real, UTC) + self.offset

    async def jump_to(self, db: asyncpg.Connection, moment: datetime) -> None:
        """Time passes until `moment` (no worker may be running)."""
        passed = moment - self.now()
        self.offset += passed
        await db.execute(
            "UPDATE procrastinate_jobs SET scheduled_at = scheduled_at - $1::interval"
            " WHERE status = 'todo' AND scheduled_at IS NOT NULL",
            passed,
        )


@pytest.fixture
def webhook_settings(webhook_settings):
    return replace(webhook_settings, worker_concurrency=8)


async def quiet_campaign(client) -> dict:
    campaign = await create_campaign(client, channel="sms", activate=False)
    url = f"{CAMPAIGNS}/{campaign['id']}"
    patched = await client.patch(url, json={"quiet_hours": NIGHT}, headers=bearer())
    assert patched.status_code == 200, patched.text
    activated = await client.post(f"{url}/activate", headers=bearer())
    assert activated.status_code == 200
    return activated.json()


def people(zone: str | None, n: int, first: int) -> list[dict]:
    return [
        {"person_id": f"p{i}", "recipient": f"+1555{i:07d}"} | ({"time_zone": zone} if zone else {})
        for i in range(first, first + n)
    ]


async def rows_by_zone(db, run_id: str) -> dict[str | None, list[asyncpg.Record]]:
    by_zone: dict[str | None, list[asyncpg.Record]] = {}
    for row in await db.fetch(
        "SELECT * FROM deliveries WHERE run_id = $1 ORDER BY position", uuid.UUID(run_id)
    ):
        by_zone.setdefault(row["time_zone"], []).append(row)
    return by_zone


def sends(sink: HttpSink, clock: VirtualClock, numbers: set[str]) -> list[datetime]:
    """When (virtual) each message to one of `numbers` reached the receiver."""
    return [
        clock.of(r.received_at) for r in list(sink.requests) if r.json()["recipient"] in numbers
    ]


def numbers(rows: list[asyncpg.Record]) -> set[str]:
    return {row["recipient"] for row in rows}


async def no_job_running(db) -> bool:
    return await db.fetchval("SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'") == 0


async def until_db(check, seconds: float = 20) -> None:
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110 - workers change the database
            await asyncio.sleep(0.05)


async def test_quiet_hours_across_midnight_on_the_spring_forward_night(
    client, db, webhook_settings, sink
):
    campaign = await quiet_campaign(client)
    # 23:00 EST on 2027-03-13, the night New York springs forward (02:00 EST -> 03:00 EDT).
    clock = VirtualClock.at(utc(2027, 3, 14, 4, 0))
    body = {"recipients": [*people(None, 5, 0), *people("Asia/Tokyo", 5, 5)]}
    run = (await publish(client, campaign["id"], body)).json()

    await drain(webhook_settings, clock_offset=clock.offset)

    zones = await rows_by_zone(db, run["id"])
    new_york, tokyo = zones[None], zones["Asia/Tokyo"]
    # 13:00 in Tokyo: sent, in the same job and windows as the New York recipients.
    assert {r["status"] for r in tokyo} == {"sent"}
    assert sorted(r.json()["recipient"] for r in sink.requests) == sorted(numbers(tokyo))
    # New York waits until 08:00 EDT = 12:00 UTC (a fixed -5 would say 13:00), pending,
    # without an attempt spent.
    assert {(r["status"], r["attempts"], r["not_before"]) for r in new_york} == {
        ("pending", 0, utc(2027, 3, 14, 12, 0))
    }
    listing = await client.get(
        f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/deliveries",
        params={"status": "pending"},
        headers=bearer(),
    )
    assert {d["not_before"] for d in listing.json()["items"]} == {"2027-03-14T12:00:00Z"}
    run_now = await client.get(f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}", headers=bearer())
    assert (run_now.json()["status"], run_now.json()["sent_count"]) == ("running", 5)

    await clock.jump_to(db, utc(2027, 3, 14, 11, 59, 57))  # 07:59:57 EDT
    async with running_worker(webhook_settings, clock_offset=clock.offset):
        assert await ended(db, run["id"], seconds=20) == "completed"

    released = sends(sink, clock, numbers(new_york))
    assert len(released) == 5
    assert (
        utc(2027, 3, 14, 12, 0) <= min(released)
        and max(released) < utc(2027, 3, 14, 12, 0) + ON_TIME
    )
    assert await assert_counters_equal_rows(db, run["id"]) == {"sent": 10}


async def test_recipients_in_three_zones_are_released_at_three_instants(
    client, db, webhook_settings, sink
):
    campaign = await quiet_campaign(client)  # 21:00-08:00, America/New_York unless told
    clock = VirtualClock.at(utc(2027, 1, 15, 8, 0))  # 03:00 EST, 02:00 CST, 01:00 MST
    body = {
        "recipients": [
            *people(None, 3, 0),
            *people("America/Chicago", 3, 3),
            *people("America/Denver", 3, 6),
            *people("Europe/London", 3, 9),  # 08:00 there: may go
        ]
    }
    run = (await publish(client, campaign["id"], body)).json()
    await drain(webhook_settings, clock_offset=clock.offset)
    zones = await rows_by_zone(db, run["id"])
    assert {r["status"] for r in zones["Europe/London"]} == {"sent"}
    releases = {
        None: utc(2027, 1, 15, 13, 0),
        "America/Chicago": utc(2027, 1, 15, 14, 0),
        "America/Denver": utc(2027, 1, 15, 15, 0),
    }
    for zone, at in releases.items():
        assert {(r["status"], r["not_before"]) for r in zones[zone]} == {("pending", at)}

    for zone, at in releases.items():
        await clock.jump_to(db, at - timedelta(seconds=3))
        async with running_worker(webhook_settings, clock_offset=clock.offset):
            released = numbers(zones[zone])
            await until_db(lambda released=released: _all_sent(db, run["id"], released))
            await until_db(lambda: no_job_running(db))

        times = sends(sink, clock, released)
        assert len(times) == 3
        assert at <= min(times) and max(times) < at + ON_TIME, (zone, times)
        still_waiting = [z for z, later in releases.items() if later > at]
        for later_zone in still_waiting:  # nothing early
            assert sends(sink, clock, numbers(zones[later_zone])) == []

    assert await run_status(db, run["id"]) == "completed"  # settled with its last send
    assert max(Counter(r.json()["delivery_id"] for r in sink.requests).values()) == 1


async def _all_sent(db, run_id: str, recipients: set[str]) -> bool:
    statuses = await db.fetch(
        "SELECT status FROM deliveries WHERE run_id = $1 AND recipient = ANY($2::text[])",
        uuid.UUID(run_id),
        list(recipients),
    )
    return {r["status"] for r in statuses} == {"sent"}


async def test_a_transient_backoff_does_not_delay_the_end_of_quiet_hours(
    client, db, webhook_settings, sink
):
    # Windows of one delivery: the failure's follow-up (100-300 s away) is queued first;
    # the waiting delivery's window then finds it and brings it forward.
    settings = replace(webhook_settings, worker_concurrency=1, delivery_retry_base_seconds=200)
    campaign = await quiet_campaign(client)
    clock = VirtualClock.at(utc(2027, 1, 15, 12, 59, 55))  # 07:59:55 EST
    failing = people("Europe/London", 1, 0)
    sink.replies[failing[0]["recipient"]] = Reply(status=503)
    body = {"recipients": [*failing, *people(None, 1, 1)]}

    async with running_worker(settings, clock_offset=clock.offset):
        run = (await publish(client, campaign["id"], body)).json()
        await until_db(lambda: _all_sent(db, run["id"], {"+15550000001"}))

    released = sends(sink, clock, {"+15550000001"})
    assert len(released) == 1
    assert utc(2027, 1, 15, 13, 0) <= released[0] < utc(2027, 1, 15, 13, 0) + ON_TIME
    attempts = await db.fetchval(
        "SELECT attempts FROM deliveries WHERE run_id = $1 AND position = 0", uuid.UUID(run["id"])
    )
    assert attempts >= 1


async def test_a_follow_up_that_ran_early_leaves_the_wake_up_in_the_queue(
    client, db, webhook_settings, sink
):
    # The transient failure's follow-up (brought forward, 0.25-0.75 s) runs long before
    # the quiet hours end; when it ends, the waiting delivery still has a job due for it.
    settings = replace(webhook_settings, worker_concurrency=1, delivery_retry_base_seconds=0.5)
    campaign = await quiet_campaign(client)
    end = utc(2027, 1, 15, 13, 0)
    # 10 s before the end: the follow-up (0.25-0.75 s) runs before it, as this test needs,
    # with seconds to spare for a loaded machine's delays.
    clock = VirtualClock.at(end - timedelta(seconds=10))
    sink.script.append(Reply(status=503))  # the first send only
    body = {"recipients": [*people("Europe/London", 1, 0), *people(None, 1, 1)]}

    async with running_worker(settings, clock_offset=clock.offset):
        run = (await publish(client, campaign["id"], body)).json()
        assert await ended(db, run["id"]) == "completed"

    retried = sends(sink, clock, {"+15550000000"})
    released = sends(sink, clock, {"+15550000001"})
    assert len(retried) == 2 and max(retried) < end
    assert len(released) == 1 and end <= released[0] < end + ON_TIME


async def test_a_follow_up_is_brought_forward_never_back(db):
    now = datetime.now(UTC)
    job = {"run_id": str(uuid.uuid4()), "first": 0, "last": 9}

    async def scheduled() -> list[datetime]:
        rows = await db.fetch("SELECT scheduled_at FROM procrastinate_jobs WHERE status = 'todo'")
        return [r["scheduled_at"] for r in rows]

    priority = delivery_priority("normal", 0)
    await defer_follow_up(db, now + timedelta(seconds=300), priority, None, **job)
    await defer_follow_up(db, now + timedelta(seconds=5), priority, None, **job)
    assert await scheduled() == [now + timedelta(seconds=5)]
    await defer_follow_up(db, now + timedelta(seconds=100), priority, None, **job)
    assert await scheduled() == [now + timedelta(seconds=5)]


async def test_a_job_put_back_in_the_queue_while_it_runs_is_not_its_own_follow_up(db):
    """A recovery may requeue a job while it runs (its worker looked dead); the job's end
    then takes it out of the queue: a follow-up it asks for must be another job."""
    now = datetime.now(UTC)
    job = {"run_id": str(uuid.uuid4()), "first": 0, "last": 9}
    priority = delivery_priority("normal", 0)
    await defer_follow_up(db, now + timedelta(seconds=300), priority, None, **job)
    requeued = await db.fetchval("SELECT id FROM procrastinate_jobs")

    await defer_follow_up(db, now + timedelta(seconds=5), priority, requeued, **job)

    rows = await db.fetch(
        "SELECT id, scheduled_at FROM procrastinate_jobs WHERE status = 'todo' ORDER BY id"
    )
    assert [(r["id"] == requeued, r["scheduled_at"]) for r in rows] == [
        (True, now + timedelta(seconds=300)),  # left as it was
        (False, now + timedelta(seconds=5)),
    ]


def clocked_worker(database_url: str, sink: HttpSink, clock: VirtualClock, log: Path):
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SMS_PROVIDER": "webhook",
        "WEBHOOK_URL": sink.url,
        "WEBHOOK_SECRET": "s",
        "WORKER_CONCURRENCY": "4",
        "STALLED_JOB_SECONDS": "2",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.jobs.clocked_worker", str(clock.offset.total_seconds())],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_a_worker_killed_while_deliveries_wait_loses_nothing_and_sends_nothing_early(
    client, db, database_url, sink, tmp_path
):
    campaign = await quiet_campaign(client)
    end = utc(2027, 1, 15, 13, 0)  # 08:00 EST
    clock = VirtualClock.at(end - timedelta(seconds=60))
    body = {"recipients": [*people(None, 30, 0), *people("Europe/London", 30, 30)]}
    log = tmp_path / "workers.log"
    first = clocked_worker(database_url, sink, clock, log)
    try:
        run = (await publish(client, campaign["id"], body)).json()
        london = {f"+1555{i:07d}" for i in range(30, 60)}
        await until_db(lambda: _all_sent(db, run["id"], london))
        await until_db(lambda: no_job_running(db))
        waiting = await db.fetchval(
            "SELECT count(*) FROM deliveries WHERE run_id = $1 AND not_before = $2",
            uuid.UUID(run["id"]),
            end,
        )
        assert waiting == 30

        await killed(first)  # SIGKILL, while 30 deliveries wait
        # However long the setup took on this machine, the restart happens 8 s before the
        # quiet hours end (time jumps while no worker runs): time for a new process to
        # start even on a loaded machine, so that it is up when the wait ends.
        await clock.jump_to(db, end - timedelta(seconds=8))
        second = clocked_worker(database_url, sink, clock, log)
        try:
            assert await ended(db, run["id"], seconds=30) == "completed"
        finally:
            exit_status = await stopped(second, "the second worker's exit on SIGTERM", log)
            assert exit_status == 0, log.read_text()[-3000:]
    finally:
        await killed(first)

    new_york = {f"+1555{i:07d}" for i in range(30)}
    released = sends(sink, clock, new_york)
    assert len(released) == 30
    assert end <= min(released) and max(released) < end + ON_TIME
    received = Counter(r.json()["delivery_id"] for r in sink.requests)
    assert set(received) == {f"{run['id']}:{i}" for i in range(60)}
    assert max(received.values()) == 1
    assert await assert_counters_equal_rows(db, run["id"]) == {"sent": 60}
