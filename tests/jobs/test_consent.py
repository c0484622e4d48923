"""Consent by topic through real workers and real providers: the one-click headers over
SMTP (aiosmtpd) and in the webhook message, the link they carry working end to end, runs
after it skipping the recipient for that topic only, a run in flight honouring it, and
every new suppression reaching the events receiver signed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import uuid
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.core.unsubscribe import UnsubscribeKeys
from tests.conftest import PUBLIC_BASE_URL, WEBHOOK_SECRET
from tests.fakes.webhook import HttpSink
from tests.helpers import CAMPAIGNS, publish
from tests.jobs.delivery_helpers import (
    assert_counters_equal_rows,
    deliver_until_ended,
    deliveries,
    until,
    work_until,
)
from tests.tokens import bearer

EVENTS_SECRET = "events-secret"
MAILTO = "unsubscribe@brand-a.example"
BODY = "News for {{person_id}}. Unsubscribe: {{ unsubscribe_url }}"
LINK = re.compile(r"<(https://[^>]+)>")


async def campaign(
    client: Any, topic: str | None, channel: str = "email", body: str = BODY
) -> dict[str, Any]:
    payload = {
        "brand_id": "brand-a",
        "name": f"About {topic}",
        "channel": channel,
        "body": body,
        "topic": topic,
        "sender": "news@brand-a.example" if channel == "email" else "+15550000000",
        "subject": "Our news" if channel == "email" else None,
    }
    created = await client.post(CAMPAIGNS, json=payload, headers=bearer())
    assert created.status_code == 201, created.text
    activated = await client.post(f"{CAMPAIGNS}/{created.json()['id']}/activate", headers=bearer())
    assert activated.status_code == 200, activated.text
    result: dict[str, Any] = activated.json()
    return result


def people(*addresses: str) -> dict[str, Any]:
    return {"recipients": [{"person_id": f"p{i}", "recipient": a} for i, a in enumerate(addresses)]}


async def publish_and_deliver(client, db, settings, campaign_id: str, *addresses: str) -> str:
    run = await publish(client, campaign_id, people(*addresses))
    assert run.status_code == 202, run.text
    run_id: str = run.json()["id"]
    await deliver_until_ended(settings, db, run_id)
    await assert_counters_equal_rows(db, run_id)
    return run_id


def path_of(url: str) -> str:
    """The link's path: the test's web app answers on another origin than PUBLIC_BASE_URL."""
    assert url.startswith(f"{PUBLIC_BASE_URL}/v1/messaging/unsubscribe/"), url
    return urlsplit(url).path


async def test_topic_mail_over_smtp_carries_one_click_headers_whose_link_works(
    client, db, settings, smtp
):
    smtp_settings = replace(
        settings, email_provider="smtp", smtp_url=smtp.url(), unsubscribe_mailto=MAILTO
    )
    newsletter = await campaign(client, "newsletter")
    await publish_and_deliver(
        client, db, smtp_settings, newsletter["id"], "Ann@example.com", "bob@example.com"
    )

    (ann,) = smtp.to("Ann@example.com")
    (bob,) = smtp.to("bob@example.com")
    header = " ".join(ann.message["List-Unsubscribe"].split())  # unfolded
    url = LINK.match(header)[1]  # type: ignore[index]
    token = url.rsplit("/", 1)[1]
    assert header == f"<{url}>, <mailto:{MAILTO}?subject=unsubscribe%20{token}>"
    assert ann.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert f"Unsubscribe: {url}" in ann.message.get_content()  # {{ unsubscribe_url }}
    assert LINK.match(bob.message["List-Unsubscribe"])[1] != url  # type: ignore[index]
    assert "ann" not in token.lower()

    # The mailbox provider POSTs the link, as RFC 8058 says.
    answer = await client.post(
        path_of(url),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200, answer.text

    again = await publish_and_deliver(
        client, db, smtp_settings, newsletter["id"], "ann@example.com", "bob@example.com"
    )
    offers = await campaign(client, "offers")
    await publish_and_deliver(client, db, smtp_settings, offers["id"], "ann@example.com")
    service = await campaign(client, None, body="Your appointment is tomorrow.")
    await publish_and_deliver(client, db, smtp_settings, service["id"], "ann@example.com")

    fates = [(row["status"], row["reason"]) for row in await deliveries(db, again)]
    assert fates == [("skipped", "suppressed"), ("sent", None)]
    subjects = [mail.message["Subject"] for mail in smtp.to("ann@example.com")]
    assert len(subjects) == 2  # offers and the service mail; not the second newsletter
    offer_mail, service_mail = smtp.to("ann@example.com")
    assert offer_mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert service_mail.message["List-Unsubscribe"] is None
    assert service_mail.message["List-Unsubscribe-Post"] is None
    assert len(smtp.to("bob@example.com")) == 2


async def test_the_webhook_message_carries_the_headers_and_the_link(
    client, db, webhook_settings, sink
):
    newsletter = await campaign(client, "newsletter")
    texts = await campaign(client, "newsletter", channel="sms", body="News. {{unsubscribe_url}}")
    service = await campaign(client, None, body="Your appointment is tomorrow.")
    await publish_and_deliver(client, db, webhook_settings, newsletter["id"], "ann@example.com")
    await publish_and_deliver(client, db, webhook_settings, texts["id"], "+15551230000")
    await publish_and_deliver(client, db, webhook_settings, service["id"], "ann@example.com")

    topic_mail, topic_sms, service_mail = (request.json() for request in sink.requests)
    url = topic_mail["unsubscribe_url"]
    assert topic_mail["headers"] == {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert topic_mail["body"].endswith(f"Unsubscribe: {url}")
    assert topic_sms["headers"] == {}  # no mail headers in a text message
    assert topic_sms["body"] == f"News. {topic_sms['unsubscribe_url']}"
    assert (service_mail["headers"], service_mail["unsubscribe_url"]) == ({}, None)
    for request in sink.requests:  # still signed over the whole body
        digest = hmac.new(WEBHOOK_SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-signature"] == f"sha256={digest}"

    page = await client.get(path_of(url))
    assert page.status_code == 200 and "newsletter" in page.text
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0  # a GET changes nothing
    answer = await client.post(path_of(topic_sms["unsubscribe_url"]))
    assert answer.status_code == 200
    row = await db.fetchrow("SELECT address, topic, source FROM suppressions")
    assert tuple(row) == ("+15551230000", "newsletter", "one_click")


async def test_a_delivery_of_the_topic_not_yet_sent_is_not_sent_after_the_answer(
    client, live_server, db, webhook_settings, sink
):
    newsletter = await campaign(client, "newsletter")
    addresses = ("first@example.com", "ann@example.com", "last@example.com")
    run = (await publish(client, newsletter["id"], people(*addresses))).json()
    one_at_a_time = replace(webhook_settings, worker_concurrency=1)  # windows of one
    sink.gate.clear()  # the first send is held, unanswered
    worker = asyncio.create_task(deliver_until_ended(one_at_a_time, db, run["id"]))
    try:
        await until(lambda: len(sink.requests) == 1)
        keys = UnsubscribeKeys.of(settings := webhook_settings)
        assert keys is not None and settings.unsubscribe_base == PUBLIC_BASE_URL
        token = keys.token(
            brand_id="brand-a",
            topic="newsletter",
            address="ann@example.com",
            run_id=uuid.UUID(run["id"]),
        )
        # Through a real server: the in-process client would block this loop, and the worker.
        async with httpx.AsyncClient(base_url=live_server) as http:
            answer = await http.post(f"/v1/messaging/unsubscribe/{token}")
        assert answer.status_code == 200
    finally:
        sink.gate.set()
    await worker

    assert [r.json()["recipient"] for r in sink.requests] == [addresses[0], addresses[2]]
    fates = [(row["status"], row["reason"]) for row in await deliveries(db, run["id"])]
    assert fates == [("sent", None), ("skipped", "suppressed"), ("sent", None)]


async def test_every_new_suppression_reaches_the_events_receiver_signed_in_order(
    client, db, settings, sink
):
    events_settings = replace(
        settings, events_webhook_url=sink.url, events_webhook_secret=EVENTS_SECRET
    )
    keys = UnsubscribeKeys.of(settings)
    assert keys is not None
    token = keys.token(
        brand_id="brand-a", topic="newsletter", address="ann@example.com", run_id=uuid.uuid4()
    )
    assert (await client.post(f"/v1/messaging/unsubscribe/{token}")).status_code == 200
    put = await client.put(
        "/v1/messaging/brands/brand-a/suppressions/bob@example.com",
        json={"reason": "manual"},
        headers=bearer(),
    )
    assert put.status_code == 200

    async def both_posted() -> bool:
        return len(suppression_posts(sink)) >= 2

    await work_until(events_settings, both_posted, what="both suppressions' posts")

    first, second = suppression_posts(sink)
    for request in (first, second):
        body = request.json()
        assert set(body) == {"id", "type", "occurred_at", "data"}
        assert request.headers["idempotency-key"] == body["id"]
        digest = hmac.new(EVENTS_SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-signature"] == f"sha256={digest}"
    assert first.json()["data"] == {
        "brand_id": "brand-a",
        "recipient": "ann@example.com",
        "topic": "newsletter",
        "reason": "unsubscribed",
        "source": "one_click",
    }
    assert second.json()["data"]["topic"] is None and second.json()["data"]["source"] == "api"
    statuses = await db.fetch("SELECT status, attempts FROM events ORDER BY seq")
    assert [tuple(row) for row in statuses] == [("delivered", 1), ("delivered", 1)]


def suppression_posts(sink: HttpSink) -> list[Any]:
    return [r for r in list(sink.requests) if json.loads(r.body)["type"] == "suppression.created"]


async def test_a_worker_without_unsubscribe_keys_never_sends_topic_mail_without_its_link(
    client, db, webhook_settings, sink
):
    keyless = replace(webhook_settings, unsubscribe_secrets=None)
    newsletter = await campaign(client, "newsletter")
    texts = await campaign(client, "newsletter", channel="sms", body="News by text.")
    mail_run = await publish_and_deliver(client, db, keyless, newsletter["id"], "ann@example.com")
    await publish_and_deliver(client, db, keyless, texts["id"], "+15551230000")

    (failed,) = await deliveries(db, mail_run)
    assert failed["status"] == "failed" and "UNSUBSCRIBE_SECRETS" in failed["last_error"]
    (sms,) = (request.json() for request in sink.requests)  # the text went, without a link
    assert (sms["recipient"], sms["unsubscribe_url"]) == ("+15551230000", None)
