"""The provider fails for a while, then recovers: answers 500, answers 429 with
Retry-After, hangs past the send timeout, or refuses connections. The deliveries complete
once it is back, none more often than its attempts; a permanent 4xx fails at once with
the provider's answer."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from tests.fakes.webhook import HttpSink, Reply
from tests.helpers import create_campaign, publish, recipients
from tests.jobs.delivery_helpers import (
    assert_counters_equal_rows,
    deliveries,
    ended,
    running_worker,
)

OUTAGE_SECONDS = 2.0
TIMEOUT = 0.5  # WEBHOOK_TIMEOUT_SECONDS


@pytest.fixture
def outage_settings(webhook_settings):
    return replace(
        webhook_settings,
        webhook_timeout_seconds=TIMEOUT,
        delivery_retry_base_seconds=0.2,
        delivery_max_attempts=12,  # 0.2 s doubling: far more than the outage
        worker_concurrency=8,
    )


FAILING = {
    "500": Reply(status=500, body=b"internal error"),
    "429-retry-after": Reply(status=429, body=b"slow down", headers={"Retry-After": "1"}),
    "hang-past-timeout": Reply(delay=TIMEOUT * 4),
}


@pytest.mark.parametrize("answer", [*FAILING, "refused"])
async def test_a_provider_outage_delays_the_run_and_loses_nothing(
    client, db, outage_settings, sink, answer
):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(20)})).json()
    if answer == "refused":
        sink.stop()
    else:
        sink.default = FAILING[answer]

    async with running_worker(outage_settings):
        await asyncio.sleep(OUTAGE_SECONDS)
        if answer == "refused":
            back = HttpSink(port=sink.port).start()
        else:
            sink.default, back = Reply(), sink
        try:
            assert await ended(db, run["id"], seconds=60) == "completed"
        finally:
            if back is not sink:
                back.stop()

    rows = await deliveries(db, run["id"])
    assert {r["status"] for r in rows} == {"sent"}
    assert await assert_counters_equal_rows(db, run["id"]) == {"sent": 20}
    received = sink.requests + (back.requests if back is not sink else [])
    attempts = attempts_of(rows, run)
    reached = Counter(r.json()["delivery_id"] for r in received)
    assert all(reached[d] >= 1 for d in attempts)
    # A 429 with Retry-After pauses the provider and is no attempt; any other failure is.
    counted = Counter(r.json()["delivery_id"] for r in received if r.status != 429)
    if answer == "429-retry-after":
        assert any(r.status == 429 for r in received)  # the outage was met
        assert await db.fetchval("SELECT count(*) FROM provider_pauses") == 1
    else:
        assert max(attempts.values()) > 1  # the outage was met
    if answer != "refused":  # a refused connection never reached anybody
        assert all(counted[d] <= attempts[d] for d in attempts)


def attempts_of(rows: list[Any], run: dict[str, Any]) -> dict[str, int]:
    return {f"{run['id']}:{r['position']}": r["attempts"] for r in rows}


async def test_a_permanent_4xx_fails_at_once_with_the_answer(client, db, outage_settings, sink):
    sink.default = Reply(status=422, body=b'{"error": "unknown recipient"}')
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(3)})).json()

    async with running_worker(outage_settings):
        assert await ended(db, run["id"]) == "completed"

    rows = await deliveries(db, run["id"])
    assert [(r["status"], r["attempts"]) for r in rows] == [("failed", 1)] * 3
    assert rows[0]["last_error"] == 'HTTP 422: {"error": "unknown recipient"}'
    assert len(sink.requests) == 3
