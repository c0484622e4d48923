"""Personalised messages delivered by a real worker to the real SMTP and HTTP receivers:
each recipient's own text arrives, HTML as multipart/alternative, a recipient without the
data it needs is never sent, a render that fails fails its delivery alone, and a retry
carries the original data."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.core.settings import Settings
from app.http.asgi import create_app
from tests.fakes.smtp import SmtpSink
from tests.fakes.webhook import HttpSink, Reply
from tests.helpers import CAMPAIGNS, create_campaign, publish
from tests.jobs.delivery_helpers import (
    assert_counters_equal_rows,
    deliver_until_ended,
    deliveries,
)
from tests.tokens import bearer

REMINDER = {
    "subject": "{{ data.first_name }}, your appointment on {{ data.date }}",
    "body": "Hi {{ data.first_name }},\n{{ data.doctor }} sees you at {{ data.time }}.",
    "html_body": "<p>Hi {{ data.first_name }}, <b>{{ data.doctor }}</b> at {{ data.time }}</p>",
}


def person(n: int, **data: Any) -> dict[str, Any]:
    return {"person_id": f"p{n}", "recipient": f"user{n}@example.com", "data": data}


@pytest.fixture
def by_smtp(settings: Settings, smtp: SmtpSink) -> Settings:
    return replace(settings, email_provider="smtp", smtp_url=smtp.url())


@pytest.fixture
def by_webhook(settings: Settings, sink: HttpSink) -> Settings:
    return replace(
        settings,
        email_provider="webhook",
        sms_provider="webhook",
        webhook_url=sink.url,
        webhook_secret="secret",
    )


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def test_each_recipient_gets_their_own_text_and_html_over_smtp(api, db, by_smtp, smtp):
    campaign = await create_campaign(api, **REMINDER)
    people = [
        person(0, first_name="Ana", doctor="Dr. Ruiz", date="Dec 24", time="15:30"),
        person(1, first_name="Bo", doctor="Dr. <Lee>", date="Dec 26", time="9:00"),
        person(2, first_name="Cy", doctor="Dr. Ruiz", date="Dec 24"),  # no time
    ]
    run = (await publish(api, campaign["id"], {"recipients": people})).json()
    assert run["skipped_count"] == 1

    await deliver_until_ended(by_smtp, db, run["id"])

    assert await assert_counters_equal_rows(db, run["id"]) == {"sent": 2, "skipped": 1}
    ana, bo = smtp.to("user0@example.com") + smtp.to("user1@example.com")
    assert ana.message["Subject"] == "Ana, your appointment on Dec 24"
    assert bo.message["Subject"] == "Bo, your appointment on Dec 26"
    for mail in (ana, bo):
        assert mail.message.get_content_type() == "multipart/alternative"
    text, html = (part.get_content() for part in bo.message.iter_parts())
    assert text == "Hi Bo,\nDr. <Lee> sees you at 9:00.\n"
    assert html == "<p>Hi Bo, <b>Dr. &lt;Lee&gt;</b> at 9:00</p>\n"
    assert next(ana.message.iter_parts()).get_content() == "Hi Ana,\nDr. Ruiz sees you at 15:30.\n"
    # The recipient without the data its text needs was never sent.
    assert smtp.to("user2@example.com") == []
    skipped = (await deliveries(db, run["id"]))[2]
    assert (skipped["status"], skipped["reason"], skipped["attempts"]) == (
        "skipped",
        "missing_data",
        0,
    )


async def test_a_failed_render_fails_its_delivery_alone_and_the_window_goes_on(
    api, db, by_webhook, sink
):
    campaign = await create_campaign(
        api,
        channel="sms",
        body="{{ data.greeting }} {% for i in (1..data.times) %}.{% endfor %}",
    )
    people = [
        {"person_id": f"p{n}", "recipient": f"+1555000000{n}", "data": data}
        for n, data in enumerate(
            [
                {"greeting": "Hi Ana", "times": 3},
                {"greeting": "x" * 1601, "times": 0},  # longer than an SMS may be
                {"greeting": "Hi Bo", "times": 2},
                {"greeting": "Hi Cy", "times": 20_000},  # past the loop bound
                {"greeting": "Hi Di", "times": 1},
            ]
        )
    ]
    run = (await publish(api, campaign["id"], {"recipients": people})).json()

    await deliver_until_ended(by_webhook, db, run["id"])

    assert await assert_counters_equal_rows(db, run["id"]) == {"sent": 3, "failed": 2}
    assert sorted(r.json()["body"] for r in sink.requests) == [
        "Hi Ana ...",
        "Hi Bo ..",
        "Hi Di .",
    ]
    rows = await deliveries(db, run["id"])
    failed = [(r["position"], r["reason"], r["attempts"], r["last_error"]) for r in rows[1::2]]
    assert failed == [
        (1, "render_failed", 0, "body: longer than 1600 characters"),
        (3, "render_failed", 0, "body: loop iteration limit reached"),
    ]
    assert all(r["status"] == "sent" and r["attempts"] == 1 for r in rows[0::2])


async def test_the_webhook_message_carries_the_rendered_subject_body_and_html(
    api, db, by_webhook, sink
):
    campaign = await create_campaign(api, **REMINDER)
    ana = person(0, first_name="Ana", doctor="Dr. Ruiz", date="Dec 24", time="15:30")
    run = (await publish(api, campaign["id"], {"recipients": [ana]})).json()

    await deliver_until_ended(by_webhook, db, run["id"])

    [message] = [r.json() for r in sink.requests]
    assert message["subject"] == "Ana, your appointment on Dec 24"
    assert message["body"] == "Hi Ana,\nDr. Ruiz sees you at 15:30."
    assert message["html_body"] == "<p>Hi Ana, <b>Dr. Ruiz</b> at 15:30</p>"
    assert "data" not in message


async def test_a_retry_sends_the_failed_their_text_rendered_from_the_original_data(
    api, db, by_webhook, sink
):
    campaign = await create_campaign(api, **REMINDER)
    people = [
        person(n, first_name=name, doctor="Dr. Ruiz", date="Dec 24", time=f"1{n}:00")
        for n, name in enumerate(["Ana", "Bo", "Cy"])
    ]
    sink.replies["user1@example.com"] = Reply(status=422, body=b"mailbox full")
    run = (await publish(api, campaign["id"], {"recipients": people})).json()
    await deliver_until_ended(by_webhook, db, run["id"])
    sink.replies.clear()

    retried = await api.post(
        f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/retry", headers=bearer()
    )
    assert retried.status_code == 202, retried.text
    await deliver_until_ended(by_webhook, db, retried.json()["id"])

    again = [r.json() for r in sink.requests if r.json()["run_id"] == retried.json()["id"]]
    assert [(m["recipient"], m["body"]) for m in again] == [
        ("user1@example.com", "Hi Bo,\nDr. Ruiz sees you at 11:00.")
    ]
    assert (
        await db.fetchval(
            "SELECT data FROM delivery_data WHERE run_id = $1", uuid.UUID(retried.json()["id"])
        )
        == people[1]["data"]
    )
