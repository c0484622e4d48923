"""An events receiver that refuses a `suppression.created` event quoting its recipient (a
CRM answering "unknown contact <address>") must not put the address into the worker's log:
its answer is kept in the event's `last_error` (ops_undelivered_events), never logged."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.fakes.webhook import HttpSink, Reply
from tests.jobs.delivery_helpers import until
from tests.jobs.processes import Workers
from tests.tokens import bearer

CANARY = "canary.patient.7731@clinic.example"


@pytest.fixture
def events_sink() -> Iterator[HttpSink]:
    with HttpSink() as sink:
        yield sink


@pytest.fixture
def workers(
    database_url: str, sink: HttpSink, events_sink: HttpSink, tmp_path
) -> Iterator[Workers]:
    workers = Workers(
        database_url,
        sink,
        tmp_path,
        EVENTS_WEBHOOK_URL=events_sink.url,
        EVENTS_WEBHOOK_SECRET="events",
        EVENTS_RETRY_BASE_SECONDS="0.05",
    )
    yield workers
    workers.stop_all()


async def test_an_events_receivers_refusal_quoting_the_recipient_is_not_logged(
    client, db, events_sink, workers
):
    refusal = json.dumps({"error": f"unknown contact {CANARY}"}).encode()
    events_sink.default = Reply(status=422, body=refusal)
    await workers.start_ready()

    response = await client.put(
        f"/v1/messaging/brands/brand-a/suppressions/{CANARY}",
        json={"reason": "manual"},
        headers=bearer(brands=["brand-a"]),
    )
    assert response.status_code in (200, 201), response.text
    # Refused twice: the first try and its retry, each logged by the worker as it ended.
    await until(lambda: workers.log(0).count("ended with status: Error") >= 2, seconds=30)

    assert CANARY in events_sink.requests[0].body.decode()  # the event itself must carry it
    assert CANARY not in workers.log(0)
    last_error = await db.fetchval(
        "SELECT last_error FROM events WHERE type = 'suppression.created'"
    )
    assert last_error == f"HTTP 422: {refusal.decode()}"
