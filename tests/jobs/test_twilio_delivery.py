"""SMS runs delivered through Twilio's API (a local stand-in) by real workers: opt-outs
that Twilio reports at send time (21610), STOP and START texted back between publishes,
and the status callbacks of a real worker process's sends reaching the web process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from db.pool import create_pool
from db.queue import MAINTENANCE_QUEUE
from jobs.app import app as procrastinate_app
from jobs.tasks import purge_awaited_receipts
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioReply, TwilioStandIn, signed_form
from tests.helpers import CAMPAIGNS, create_campaign, publish
from tests.jobs.delivery_helpers import (
    assert_counters_equal_rows,
    deliver_until_ended,
    deliveries,
    ended,
)
from tests.jobs.processes import Workers
from tests.tokens import bearer
from tests.web import web_process

BASE = "http://testserver.local"  # the in-process client's origin: PUBLIC_BASE_URL
INBOUND = "/v1/messaging/providers/twilio/inbound"
OURS = "+15550000000"  # what create_campaign's SMS campaigns send from
PATIENT = "+15557654321"
OTHERS = ["+15557000001", "+15557000002"]
OPTED_OUT = TwilioReply(400, 21610, "Attempt to send to unsubscribed recipient")


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn() as twilio:
        yield twilio


@pytest.fixture
def settings(settings, twilio):
    """Web and worker alike: SMS through the stand-in, its callbacks checked against BASE."""
    return replace(
        settings,
        sms_provider="twilio",
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_api_url=twilio.url,
        public_base_url=BASE,
        delivery_retry_base_seconds=0.01,
        worker_concurrency=4,
    )


def people(*numbers: str) -> dict[str, Any]:
    return {"recipients": [{"person_id": f"p{i}", "recipient": n} for i, n in enumerate(numbers)]}


async def texted(client: Any, body: str) -> None:
    """The patient texts `body` to our number."""
    form = {"MessageSid": f"SM{uuid.uuid4().hex}", "From": PATIENT, "To": OURS, "Body": body}
    content, headers = signed_form(BASE + INBOUND, form)
    response = await client.post(INBOUND, content=content, headers=headers)
    assert response.status_code == 200, response.text


async def test_21610_fails_the_delivery_and_suppresses_the_number_for_the_brand(
    client, db, settings, twilio
):
    twilio.replies[PATIENT] = OPTED_OUT
    campaign = await create_campaign(client, channel="sms")
    await create_campaign(client, brand="brand-b", channel="sms")
    run = (await publish(client, campaign["id"], people(OTHERS[0], PATIENT, OTHERS[1]))).json()

    await deliver_until_ended(settings, db, run["id"])

    rows = await deliveries(db, run["id"])
    assert [r["status"] for r in rows] == ["sent", "failed", "sent"]
    assert rows[1]["attempts"] == 1  # permanent: never tried again
    assert rows[1]["last_error"] == (
        "HTTP 400: Twilio error 21610: Attempt to send to unsubscribed recipient"
    )
    sids = [twilio.to(number)[0].sid for number in OTHERS]
    assert [rows[0]["provider_message_id"], rows[2]["provider_message_id"]] == sids
    assert all(m.form["From"] == OURS for m in twilio.messages)
    callback = f"{BASE}/v1/messaging/providers/twilio/status"
    assert all(m.form["StatusCallback"] == callback for m in twilio.messages)
    await assert_counters_equal_rows(db, run["id"])
    # The sent texts await their receipts, by sid; the refused one awaits none.
    awaited = await db.fetch("SELECT message_id, position FROM awaited_receipts ORDER BY 2")
    assert [tuple(a) for a in awaited] == [(sids[0], 0), (sids[1], 2)]
    suppressions = await db.fetch("SELECT brand_id, address, reason, source FROM suppressions")
    assert [tuple(s) for s in suppressions] == [
        ("brand-a", PATIENT, "unsubscribed", "provider:twilio")
    ]

    # The next publish of the brand skips the number; no text is tried again.
    again = (await publish(client, campaign["id"], people(PATIENT, OTHERS[0]))).json()
    await deliver_until_ended(settings, db, again["id"])
    rows = await deliveries(db, again["id"])
    assert [(r["status"], r["reason"]) for r in rows] == [("skipped", "suppressed"), ("sent", None)]
    assert len(twilio.to(PATIENT)) == 1


async def test_stop_is_honoured_for_deliveries_already_pending_and_start_lifts_it(
    client, db, settings, twilio
):
    campaign = await create_campaign(client, channel="sms")
    pending = (await publish(client, campaign["id"], people(PATIENT, *OTHERS))).json()

    await texted(client, "STOP")  # after the publish, before any worker took the run
    await deliver_until_ended(settings, db, pending["id"])

    rows = await deliveries(db, pending["id"])
    assert [(r["status"], r["reason"]) for r in rows] == [
        ("skipped", "suppressed"),
        ("sent", None),
        ("sent", None),
    ]
    assert twilio.to(PATIENT) == []
    await assert_counters_equal_rows(db, pending["id"])

    # Published after the STOP: skipped at publish.
    stopped = await publish(client, campaign["id"], people(PATIENT))
    assert stopped.json()["skipped_count"] == 1

    await texted(client, "start")
    resumed = (await publish(client, campaign["id"], people(PATIENT))).json()
    assert resumed["skipped_count"] == 0
    await deliver_until_ended(settings, db, resumed["id"])
    assert [r["status"] for r in await deliveries(db, resumed["id"])] == ["sent"]
    assert len(twilio.to(PATIENT)) == 1


async def test_a_worker_process_texts_through_twilio_and_its_receipts_set_the_outcomes(
    client, db, database_url, twilio, sink, tmp_path
):
    """The worker as the Procfile starts it sends through the stand-in; the stand-in posts
    signed status callbacks, as Twilio would, through a proxy's origin to the web process
    as the Procfile starts it; the deliveries listing shows the outcomes."""
    twilio.receipts = {
        PATIENT: ["sent", "delivered"],
        OTHERS[0]: ["sent", "undelivered:30003"],
        OTHERS[1]: ["failed:30008"],
    }
    public = "https://messaging.example.com"
    twilio_env = {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_BASE_URL": public}
    async with web_process(database_url, **twilio_env) as web:
        twilio.callbacks_via = web.url
        workers = Workers(database_url, sink, tmp_path)
        workers.env |= {
            **twilio_env,
            "SMS_PROVIDER": "twilio",
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_API_URL": twilio.url,
        }
        try:
            await workers.start_ready()
            campaign = await create_campaign(client, channel="sms")
            run = (await publish(client, campaign["id"], people(PATIENT, *OTHERS))).json()
            assert await ended(db, run["id"]) == "completed"
        finally:
            workers.stop_all()

        callbacks = await asyncio.to_thread(twilio.post_callbacks)

    assert len(twilio.messages) == 3 and twilio.refused_auth == 0
    assert all(c.url == f"{public}/v1/messaging/providers/twilio/status" for c in callbacks)
    assert [c.answer for c in callbacks] == [200] * 5
    assert all(c.content_type.startswith("text/xml") for c in callbacks)
    listing = await client.get(
        f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/deliveries", headers=bearer()
    )
    shown = [
        (d["status"], d["provider_message_id"], d["outcome"], d["outcome_detail"])
        for d in listing.json()["items"]
    ]
    assert shown == [
        ("sent", twilio.to(PATIENT)[0].sid, "delivered", None),
        ("sent", twilio.to(OTHERS[0])[0].sid, "undelivered", "Twilio: undelivered, error 30003"),
        ("sent", twilio.to(OTHERS[1])[0].sid, "undelivered", "Twilio: failed, error 30008"),
    ]
    assert "Traceback" not in workers.log(0)
    assert await db.fetchval("SELECT count(*) FROM awaited_receipts") == 0  # all came


async def test_sends_whose_receipt_never_came_are_forgotten_after_a_week(db, database_url):
    run_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO awaited_receipts (message_id, run_id, position, sent_at) VALUES"
        " ('SMold', $1, 0, now() - interval '7 days 1 minute'),"
        " ('SMrecent', $1, 1, now() - interval '6 days 23 hours')",
        run_id,
    )
    assert {
        t.task.name: t.cron for t in procrastinate_app.periodic_registry.periodic_tasks.values()
    }["purge_awaited_receipts"] == "37 * * * *"
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        async with procrastinate_app.open_async(pool):
            await purge_awaited_receipts.defer_async(timestamp=0)
            await procrastinate_app.run_worker_async(
                queues=[MAINTENANCE_QUEUE], wait=False, install_signal_handlers=False
            )
    finally:
        await pool.close()

    assert await db.fetchval("SELECT array_agg(message_id) FROM awaited_receipts") == ["SMrecent"]
