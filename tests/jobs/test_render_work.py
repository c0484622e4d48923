"""A real worker process given a campaign whose template would work for hours for one
recipient: that delivery fails (`render_failed`), and the worker goes on with the others
and with other runs."""

from __future__ import annotations

from tests.helpers import create_campaign, publish
from tests.jobs.delivery_helpers import assert_counters_equal_rows, deliveries, ended
from tests.jobs.processes import delivery_ids

SECONDS = 20
"""A run of a few recipients takes well under a second; a render without bounds, hours."""


async def test_a_render_that_would_work_for_hours_fails_its_delivery_and_the_worker_goes_on(
    client, db, sink, workers
):
    hostile = await create_campaign(
        client, body="Hi {{ data.name }}{% for i in (1..data.n) offset: data.skip %}.{% endfor %}"
    )
    plain = await create_campaign(client, body="Your check-up is due.")
    people = [
        {
            "person_id": "p0",
            "recipient": "ana@example.com",
            "data": {"name": "Ana", "n": 3, "skip": 1},
        },
        {
            "person_id": "p1",
            "recipient": "bo@example.com",
            "data": {"name": "Bo", "n": 10**12, "skip": 10**12 - 9},
        },
        {
            "person_id": "p2",
            "recipient": "cy@example.com",
            "data": {"name": "Cy", "n": 1, "skip": 0},
        },
    ]
    await workers.start_ready()

    run = (await publish(client, hostile["id"], {"recipients": people})).json()
    other = (await publish(client, plain["id"], {"recipients": people[:1]})).json()

    assert await ended(db, run["id"], SECONDS) == "completed"
    assert await ended(db, other["id"], SECONDS) == "completed"
    assert await assert_counters_equal_rows(db, run["id"]) == {"sent": 2, "failed": 1}
    bo = (await deliveries(db, run["id"]))[1]
    assert (bo["status"], bo["reason"], bo["last_error"]) == (
        "failed",
        "render_failed",
        "body: range limit reached",
    )
    bodies = sorted(r.json()["body"] for r in sink.requests)
    assert bodies == ["Hi Ana..", "Hi Cy.", "Your check-up is due."]


SLOW = (
    "{% for i in (1..100) %}{% assign d = data.x | append: i | date: '%Y' %}{% endfor %}"
    "Hi {{ data.name }}"
)
"""About 0.4 s of CPU a render: slow, within every bound (100 dates of 1,000 characters
parsed: 1.6 Mi of the 4 Mi of work a render may do)."""


async def test_a_window_whose_renders_take_longer_than_its_claim_is_still_delivered_once(
    client, db, sink, workers
):
    """A window renders all its messages before it sends: 8 renders of 0.4 s outlast the
    2 s claim (STALLED_JOB_SECONDS of these workers) unless the heartbeat may renew it
    meanwhile. Before, every send found its claim lapsed, was given back, and the next
    window did the same, for ever."""
    workers.env["WORKER_CONCURRENCY"] = "8"
    campaign = await create_campaign(client, body=SLOW)
    people = [
        {
            "person_id": f"p{n}",
            "recipient": f"user{n}@example.com",
            "data": {"x": "2020" + " " * 1000, "name": f"N{n}"},
        }
        for n in range(8)
    ]
    await workers.start_ready()

    run = (await publish(client, campaign["id"], {"recipients": people})).json()

    assert await ended(db, run["id"], 60) == "completed"
    assert await assert_counters_equal_rows(db, run["id"]) == {"sent": 8}
    assert set(delivery_ids(sink).values()) == {1}
    assert len(delivery_ids(sink)) == 8
