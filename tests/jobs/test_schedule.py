"""Scheduled runs delivered by a real worker to the real HTTP receiver, on the real clock:
nothing before send_at, every job due at send_at exactly, and the first send soon after it
(workers poll every second)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import CAMPAIGNS, create_campaign, publish, recipients
from tests.jobs.delivery_helpers import (
    assert_counters_equal_rows,
    ended,
    running_worker,
)
from tests.tokens import bearer

LEAD = timedelta(seconds=3)
"""How far ahead the tests schedule: enough for the worker to be up and polling."""


@pytest.fixture
def webhook_settings(webhook_settings):
    return replace(webhook_settings, worker_concurrency=8, delivery_batch_size=50)


async def test_a_scheduled_run_starts_on_time(client, db, webhook_settings, sink):
    campaign = await create_campaign(client)
    async with running_worker(webhook_settings):
        send_at = datetime.now(UTC) + LEAD
        body = {"recipients": recipients(120), "send_at": send_at.isoformat()}
        run = (await publish(client, campaign["id"], body)).json()
        assert run["status"] == "scheduled"

        # Until send_at the run waits, and nothing reaches the receiver: checked when the
        # database read the status before send_at (clock_timestamp() comes after the
        # read), as a loaded machine may delay the query past it.
        while datetime.now(UTC) < send_at - timedelta(milliseconds=300):
            received = list(sink.requests)
            status, at = await db.fetchrow(
                "SELECT status, clock_timestamp() FROM runs WHERE id = $1", uuid.UUID(run["id"])
            )
            if at < send_at:
                assert (status, received) == ("scheduled", [])
            await asyncio.sleep(0.1)

        assert await ended(db, run["id"], seconds=30) == "completed"

    # What the code controls: every job of the run was due exactly at send_at.
    due = await db.fetch(
        "SELECT DISTINCT scheduled_at FROM procrastinate_jobs"
        " WHERE task_name = 'deliver_batch' AND args->>'run_id' = $1",
        run["id"],
    )
    assert [row["scheduled_at"] for row in due] == [send_at]
    # And what the receiver saw: nothing early; the first send within the 1 s poll and a
    # window. 5 s is out of reach of this shared machine's 2-3x swings, and well short of
    # what a run found late (procrastinate's own 5 s poll, or a missed job) would take.
    first_send = min(r.received_at for r in sink.requests)
    late = first_send - send_at.timestamp()
    assert 0 <= late < 5.0, f"first send {late:.2f} s after send_at"
    assert len({r.json()["delivery_id"] for r in sink.requests}) == 120
    counts = await assert_counters_equal_rows(db, run["id"])
    assert counts == {"sent": 120}
    final = (
        await client.get(f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}", headers=bearer())
    ).json()
    assert final["status"] == "completed"
    assert datetime.fromisoformat(final["started_at"]) >= send_at
    assert final["scheduled_for"] == run["scheduled_for"]
    events = await db.fetch(
        "SELECT type, data FROM events WHERE run_id = $1 ORDER BY seq", uuid.UUID(run["id"])
    )
    assert [e["type"] for e in events] == ["run.started", "run.completed"]
    assert events[0]["data"]["status"] == "running"
    assert events[0]["data"]["scheduled_for"] == run["scheduled_for"]


async def test_a_run_cancelled_before_its_start_sends_nothing(client, db, webhook_settings, sink):
    campaign = await create_campaign(client)
    async with running_worker(webhook_settings):
        send_at = datetime.now(UTC) + LEAD
        body = {"recipients": recipients(120), "send_at": send_at.isoformat()}
        # 30 s out: its cancel comes before its start, however slow two publishes and a
        # cancel are on a loaded machine (LEAD is 3 s).
        later = {**body, "send_at": (send_at + timedelta(seconds=30)).isoformat()}
        run = (await publish(client, campaign["id"], later)).json()
        control = (await publish(client, campaign["id"], body)).json()

        cancel = await client.post(
            f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/cancel", headers=bearer()
        )
        assert cancel.status_code == 200, cancel.text
        jobs = await db.fetchval(
            "SELECT count(*) FROM procrastinate_jobs WHERE args ->> 'run_id' = $1"
            " AND task_name = 'deliver_batch'",
            run["id"],
        )
        assert jobs == 0

        # The other run is delivered: the worker was there, and found no job of this one.
        assert await ended(db, control["id"], seconds=30) == "completed"

    delivered_runs = {r.json()["run_id"] for r in sink.requests}
    assert delivered_runs == {control["id"]}
    final = (
        await client.get(f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}", headers=bearer())
    ).json()
    assert (final["status"], final["skipped_count"], final["sent_count"]) == ("cancelled", 120, 0)
    assert final["started_at"] is None
    await assert_counters_equal_rows(db, run["id"])
    events = await db.fetch("SELECT type FROM events WHERE run_id = $1", uuid.UUID(run["id"]))
    assert [e["type"] for e in events] == ["run.cancelled"]
