"""A canary for patient data: an address, person ids and a value of a recipient's `data`
that appear nowhere else go through every route and path that handles them, while
everything that leaves the service is captured: every log line of the web and worker
processes (started as the Procfile starts them), every span a real OTLP collector
receives, the /metrics text, every error body, every cursor, every run event, an
unsubscribe link's token and page. The canary shows only in the answers that must show
it: the deliveries listing, the suppression itself, its `suppression.created` event and
its audit trail (read by the address); the data canary only in the messages the providers
receive (and the preview that renders it for its caller). A second test takes the SMS
canary through Twilio: the provider's refusal, its receipts and the texts a recipient
sends."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.core.settings import Settings
from app.core.unsubscribe import UnsubscribeKeys
from app.domain.access import AUDIT_READ
from tests.conftest import PUBLIC_BASE_URL
from tests.fakes.otlp import OtlpReceiver
from tests.fakes.server import free_port
from tests.fakes.smtp import SmtpSink
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioReply, TwilioStandIn, signed_form
from tests.fakes.webhook import HttpSink, Reply
from tests.helpers import CAMPAIGNS
from tests.jobs.delivery_helpers import ENDED, run_status, until
from tests.tokens import TEST_SECRET, UNSUBSCRIBE_SECRET, bearer
from tests.waiting import killed, pages, stopped
from tests.web import until_ready, web_command

ROOT = Path(__file__).resolve().parents[2]
BRAND = "brand-a"
BRANDS = f"/v1/messaging/brands/{BRAND}"
# The canary: nothing else in the service or its tests is spelt like these.
EMAIL = "canary.q7x3@hiv-clinic-canary.example"
PHONE = "+15557304619"
PERSON = "person-canary-k2v9"
SMS_PERSON = "person-canary-sms-w4p1"
DATA = "diagnosis-canary-r8m2x"
"""A value of a recipient's `data`: never returned by the API, only rendered into messages."""
CANARIES = (EMAIL, PHONE, PERSON, SMS_PERSON, DATA)
# What providers answer about it: their words quote the address (and more).
SMTP_REFUSAL = f"550 5.1.1 <{EMAIL}>: Recipient address rejected ({PERSON})"
WEBHOOK_REFUSAL = json.dumps({"error": f"{PHONE} ({SMS_PERSON}, {EMAIL}) cannot receive"})
WEBHOOK_SECRET = "provider-secret"
EVENTS_SECRET = "events-secret"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp(smtp: SmtpSink) -> SmtpSink:
    smtp.replies[EMAIL] = SMTP_REFUSAL
    return smtp


@pytest.fixture
def events_sink() -> Iterator[HttpSink]:
    with HttpSink() as sink:
        yield sink


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # stdout and stderr: every line the process writes
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


class Caller:
    """A client of the API that keeps every error body and every cursor it is given."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.error_bodies: list[str] = []
        self.cursors: list[str] = []

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", bearer(brands=[BRAND]))
        response = await self.http.request(method, url, **kwargs)
        if response.status_code >= 400:
            self.error_bodies.append(response.text)
            body = response.json()
            assert set(body) <= {"error", "message", "details"}, body
        elif response.headers.get("content-type", "").startswith("application/json"):
            cursor = response.json().get("next_cursor") if response.text.startswith("{") else None
            if cursor:
                self.cursors.append(cursor)
        return response

    async def walk(self, url: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a listing, a page of one item at a time (a cursor per item)."""
        items: list[dict[str, Any]] = []
        cursor = None
        for _ in pages(f"the walk of {url}"):
            query = {"limit": 1, **params, **({"cursor": cursor} if cursor else {})}
            response = await self.request("GET", url, params=query)
            assert response.status_code == 200, response.text
            items += response.json()["items"]
            if (cursor := response.json()["next_cursor"]) is None:
                break
        return items


def signed_webhook(body: bytes) -> dict[str, str]:
    digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Signature": f"sha256={digest}"}


def signed_sendgrid(body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = SENDGRID_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


async def campaign(api: Caller, channel: str, topic: str | None = None) -> str:
    body = {
        "brand_id": BRAND,
        "name": f"Reminder by {channel}",
        "channel": channel,
        "body": "Your appointment is tomorrow, {{person_id}}. {{ data.note | default: '' }}",
        "subject": "Appointment" if channel == "email" else None,
        "sender": "care@example.com" if channel == "email" else "+15550000000",
        "topic": topic,
    }
    created = await api.request("POST", CAMPAIGNS, json=body)
    assert created.status_code == 201, created.text
    campaign_id: str = created.json()["id"]
    activated = await api.request("POST", f"{CAMPAIGNS}/{campaign_id}/activate")
    assert activated.status_code == 200, activated.text
    return campaign_id


def readable(raw: bytes) -> str:
    """Bytes as text for a search, whatever they are (protobuf, JSON, log lines)."""
    return raw.decode("utf-8", "replace")


def where(canary: str, captured: dict[str, str]) -> list[str]:
    return [name for name, text in captured.items() if canary in text]


async def test_patient_data_shows_only_in_the_answers_that_must_show_it(
    database_url, db, receiver, smtp, sink, events_sink, tmp_path
):
    sink.replies[PHONE] = Reply(status=422, body=WEBHOOK_REFUSAL.encode())
    sendgrid_key = SENDGRID_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    common = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "DATABASE_URL": database_url,
        "JWT_SECRET": TEST_SECRET,
        "LOG_LEVEL": "DEBUG",  # every line there is
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "UNSUBSCRIBE_SECRETS": UNSUBSCRIBE_SECRET,
    }
    port = free_port()
    web = start(
        web_command(port),
        {
            **common,
            "SENDGRID_WEBHOOK_PUBLIC_KEY": base64.b64encode(sendgrid_key).decode(),
            "METRICS_REFRESH_SECONDS": "0.2",
        },
        tmp_path / "web.log",
    )
    worker = start(
        [sys.executable, "-m", "jobs.worker"],
        {
            **common,
            "EMAIL_PROVIDER": "smtp",
            "SMTP_URL": smtp.url(),
            "SMS_PROVIDER": "webhook",
            "WEBHOOK_URL": sink.url,
            "EVENTS_WEBHOOK_URL": events_sink.url,
            "EVENTS_WEBHOOK_SECRET": EVENTS_SECRET,
            "DELIVERY_MAX_ATTEMPTS": "1",
        },
        tmp_path / "worker.log",
    )
    answers: dict[str, str] = {}  # the answers that may show the canary
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            await until_ready(str(http.base_url), tmp_path / "web.log")
            api = Caller(http)
            email_campaign = await campaign(api, "email")
            sms_campaign = await campaign(api, "sms")

            # Publish, with a key and its replay; and a body the API refuses.
            people = [
                {"person_id": "p0", "recipient": "first@example.com", "data": {"note": DATA}},
                {
                    "person_id": PERSON,
                    "recipient": EMAIL,
                    "time_zone": "Europe/Paris",
                    "data": {"note": DATA, "more": {"deep": [DATA]}},
                },
                {"person_id": "p2", "recipient": "third@example.com"},
            ]
            publish = f"{CAMPAIGNS}/{email_campaign}/publish"
            keyed = {**bearer(brands=[BRAND]), "Idempotency-Key": "canary-run"}
            email_run = await api.request(
                "POST", publish, json={"recipients": people}, headers=keyed
            )
            replay = await api.request("POST", publish, json={"recipients": people}, headers=keyed)
            assert email_run.status_code == replay.status_code == 202, email_run.text
            refused = await api.request(
                "POST", publish, json={"recipients": [{"person_id": PERSON, "recipient": 7}]}
            )
            assert refused.status_code == 400
            for data in ({"note": DATA + "x" * 5000}, {"note": DATA + "\x00"}, [DATA]):
                refused = await api.request(
                    "POST", publish, json={"recipients": [people[0] | {"data": data}]}
                )
                assert refused.status_code == 400, refused.text
            # The preview renders the data for its caller; a failed one names no value.
            preview = f"{CAMPAIGNS}/{email_campaign}/preview"
            shown = await api.request("POST", preview, json=people[0])
            assert shown.status_code == 200, shown.text
            previewed = shown.json()["body"]
            too_long = {"person_id": "s9", "recipient": PHONE, "data": {"note": DATA * 100}}
            for url, body in (
                (preview, people[0] | {"data": {"note": DATA * 200}}),  # over the data's bound
                (f"{CAMPAIGNS}/{sms_campaign}/preview", too_long),  # over an SMS's length
            ):
                failed_preview = await api.request("POST", url, json=body)
                assert failed_preview.status_code == 400, failed_preview.text
            sms_run = await api.request(
                "POST",
                f"{CAMPAIGNS}/{sms_campaign}/publish",
                json={
                    "recipients": [
                        {"person_id": "s0", "recipient": "+15550000001"},
                        {"person_id": SMS_PERSON, "recipient": PHONE, "data": {"note": DATA}},
                    ]
                },
            )
            assert sms_run.status_code == 202, sms_run.text
            runs = {email_campaign: email_run.json()["id"], sms_campaign: sms_run.json()["id"]}
            # A newsletter too: its message to the canary carries an unsubscribe link.
            newsletter = await campaign(api, "email", topic="newsletter")
            newsletter_run = await api.request(
                "POST", f"{CAMPAIGNS}/{newsletter}/publish", json={"recipients": people}
            )
            assert newsletter_run.status_code == 202, newsletter_run.text

            # The providers refuse the canary, quoting it.
            async with asyncio.timeout(60):
                for run_id in [*runs.values(), newsletter_run.json()["id"]]:
                    while await run_status(db, run_id) not in ENDED:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            # A run settled by its first window goes from queued to completed: one event.
            await until(lambda: len(events_sink.requests) >= 2, seconds=30)

            # A retry of the failed carries their data along (and SMTP refuses it again).
            retry = await api.request(
                "POST", f"{CAMPAIGNS}/{email_campaign}/runs/{runs[email_campaign]}/retry"
            )
            assert retry.status_code == 202, retry.text
            async with asyncio.timeout(60):
                while await run_status(db, retry.json()["id"]) not in ENDED:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)

            # Provider feedback, quoting the address in its details.
            email_run_id = runs[email_campaign]
            feedback = json.dumps(
                {
                    "events": [
                        {
                            "delivery_id": f"{email_run_id}:1",
                            "type": "bounced",
                            "occurred_at": "2026-12-01T10:00:00Z",
                            "detail": SMTP_REFUSAL,
                        },
                        {"delivery_id": f"{email_run_id}:1", "type": "bounced"},
                        {"delivery_id": EMAIL, "type": "delivered", "occurred_at": PERSON},
                    ]
                }
            ).encode()
            fed = await api.request(
                "POST",
                "/v1/messaging/providers/webhook/events",
                content=feedback,
                headers=signed_webhook(feedback),
            )
            assert fed.status_code == 200, fed.text
            sendgrid = json.dumps(
                [
                    {
                        "email": EMAIL,
                        "event": "bounce",
                        "type": "bounce",
                        "reason": SMTP_REFUSAL,
                        "timestamp": int(time.time()),
                        "delivery_id": f"{email_run_id}:0",
                    },
                    {"email": EMAIL, "event": "open", "timestamp": "now"},
                ]
            ).encode()
            fed_sendgrid = await api.request(
                "POST",
                "/v1/messaging/providers/sendgrid/events",
                content=sendgrid,
                headers=signed_sendgrid(sendgrid),
            )
            assert fed_sendgrid.status_code == 200, fed_sendgrid.text
            unsigned = await api.request(
                "POST", "/v1/messaging/providers/webhook/events", content=feedback, headers={}
            )
            assert unsigned.status_code == 401

            # The deliveries listings, a page per delivery: they show the canary.
            listed = []
            for campaign_id, run_id in runs.items():
                url = f"{CAMPAIGNS}/{campaign_id}/runs/{run_id}/deliveries"
                listed += await api.walk(url)
                listed += await api.walk(url, status="failed")
            answers["deliveries"] = json.dumps(listed)
            bad_cursor = await api.request(
                "GET",
                f"{CAMPAIGNS}/{email_campaign}/runs/{email_run_id}/deliveries",
                params={"cursor": api.cursors[0][:-4]},
            )
            assert bad_cursor.status_code == 400

            # Suppressions: the feedback added the canary; around it, others.
            suppression = f"{BRANDS}/suppressions/{EMAIL}"
            for other in ("aa-first@example.com", "zz-last@example.com", "+15550000009"):
                put = await api.request(
                    "PUT", f"{BRANDS}/suppressions/{other}", json={"reason": "manual"}
                )
                assert put.status_code == 200, put.text
            got = await api.request("GET", suppression)
            assert got.status_code == 200 and got.json()["reason"] == "bounced", got.text
            answers["suppression"] = got.text
            answers["suppressions"] = json.dumps(await api.walk(f"{BRANDS}/suppressions"))
            answers["suppressions bounced"] = json.dumps(
                await api.walk(f"{BRANDS}/suppressions", reason="bounced")
            )
            assert (await api.request("DELETE", suppression)).status_code == 204
            assert (await api.request("GET", suppression)).status_code == 404
            assert (await api.request("DELETE", suppression)).status_code == 404
            put = await api.request("PUT", suppression, json={"reason": "manual"})
            assert put.status_code == 200
            answers["suppression put"] = put.text
            for bad in (
                await api.request("PUT", suppression, json={"reason": PERSON}),
                await api.request("PUT", f"{suppression}x@", json={"reason": "manual"}),
                await api.request("GET", f"{suppression}/more"),
                await api.request("PATCH", suppression, json={"reason": "manual"}),
                await api.request("GET", suppression, headers=bearer(brands=["brand-b"])),
            ):
                assert 400 <= bad.status_code < 500, bad.text

            # Its topic suppression, and its unsubscribe link: junk, the page, the POST.
            topic = f"{BRANDS}/topics/newsletter/suppressions/{EMAIL}"
            assert (await api.request("PUT", topic, json={"reason": "manual"})).status_code == 200
            answers["topic suppression"] = (await api.request("GET", topic)).text
            assert (await api.request("DELETE", topic)).status_code == 204
            assert (await api.request("GET", topic)).status_code == 404
            token = unsubscribe_token(EMAIL)
            link = f"/v1/messaging/unsubscribe/{token}"
            for junk in (link[:-3] + "xyz", f"{link}{PERSON}", link.replace(token, EMAIL)):
                for method in ("GET", "POST"):
                    assert (await api.request(method, junk, headers={})).status_code == 404
            page = await api.request("GET", link, headers={})
            assert page.status_code == 200
            unsubscribed = await api.request(
                "POST", link, content=b"List-Unsubscribe=One-Click", headers=FORM
            )
            assert unsubscribed.status_code == 200
            answers["topic suppressions"] = json.dumps(
                await api.walk(f"{BRANDS}/suppressions", topic="newsletter")
            )
            # Every suppression.created event reached the receiver (the one-click's last).
            await until(lambda: "one_click" in json.dumps(suppression_events(events_sink)), 30)

            # The audit trail of the canary's address: the answer names it (its target);
            # its cursors (a page per row) and a refused filter do not.
            auditor = bearer(brands=[BRAND], scopes=[AUDIT_READ])
            trail: list[dict[str, Any]] = []
            cursor = None
            for _ in pages("the walk of the canary's audit trail"):
                query = {"target_id": EMAIL, "limit": 1, **({"cursor": cursor} if cursor else {})}
                page_of_trail = await api.request(
                    "GET", f"{BRANDS}/audit", params=query, headers=auditor
                )
                assert page_of_trail.status_code == 200, page_of_trail.text
                trail += page_of_trail.json()["items"]
                if (cursor := page_of_trail.json()["next_cursor"]) is None:
                    break
            assert [(i["action"], i["actor"]) for i in trail] == [
                ("suppression.created", "recipient"),  # the one-click
                ("suppression.deleted", "service:test"),  # the topic's
                ("suppression.created", "service:test"),
                ("suppression.created", "service:test"),  # brand-wide, manual
                ("suppression.deleted", "service:test"),
                ("suppression.created", "provider:webhook"),  # the bounce
            ]
            answers["audit"] = json.dumps(trail)
            for bad in ({"target_id": EMAIL + "\x00"}, {"target_id": EMAIL * 10, "actor": PERSON}):
                refused = await api.request("GET", f"{BRANDS}/audit", params=bad, headers=auditor)
                assert refused.status_code == 400, refused.text

            # A 500 on a route whose path holds the address.
            await db.execute(
                "CREATE FUNCTION canary_fail() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'forced failure'; END $$;"
                " CREATE TRIGGER canary_fail BEFORE INSERT OR UPDATE ON suppressions"
                " FOR EACH ROW WHEN (NEW.reason = 'complained') EXECUTE FUNCTION canary_fail()"
            )
            failed = await api.request("PUT", suppression, json={"reason": "complained"})
            assert failed.status_code == 500, failed.text

            metrics = (await api.request("GET", "/metrics")).text
            # SIGTERM, and a clean exit: the spans still batched are sent on the way.
            await stopped(worker, "the worker's exit on SIGTERM", tmp_path / "worker.log")
            await stopped(web, "the web process's exit on SIGTERM", tmp_path / "web.log")
    finally:
        for process in (web, worker):
            await killed(process)

    web_log = (tmp_path / "web.log").read_text(errors="replace")
    worker_log = (tmp_path / "worker.log").read_text(errors="replace")
    cursors = {
        f"cursor {i}": f"{cursor} {readable(base64.urlsafe_b64decode(cursor + '==='))}"
        for i, cursor in enumerate(api.cursors)
    }
    captured = {
        "web log": web_log,
        "worker log": worker_log,
        "spans": "\n".join(readable(body) for body in receiver.bodies),
        "metrics": metrics,
        **{f"error body {i}": body for i, body in enumerate(api.error_bodies)},
        **cursors,
        **{f"run event {i}": readable(r.body) for i, r in enumerate(run_events(events_sink))},
        "unsubscribe token": f"{token} {readable(base64.urlsafe_b64decode(token + '==='))}",
        "unsubscribe page": page.text,
        "unsubscribed page": unsubscribed.text,
    }
    answers["suppression events"] = json.dumps(suppression_events(events_sink))
    for canary in CANARIES:
        assert where(canary, captured) == [], [captured[n][:2000] for n in where(canary, captured)]

    # The canary did go everywhere it could: the answers that must show it show it, with
    # the providers' own words...
    assert where(EMAIL, answers) == list(answers)
    assert PERSON in answers["deliveries"] and SMS_PERSON in answers["deliveries"]
    assert PHONE in answers["deliveries"] and SMTP_REFUSAL in answers["deliveries"]
    assert f"{PHONE} ({SMS_PERSON}" in answers["deliveries"]  # the webhook's last_error
    # ... the providers refused it, the send spans say so by code ...
    assert smtp.to(EMAIL) == [] and [r.status for r in sink.requests].count(422) == 1
    sends = [s for s in receiver.spans if s.name in ("send smtp", "send webhook") and s.error]
    # The reminder, the newsletter and the retry by SMTP; the SMS.
    assert len(sends) == 4, receiver.spans
    assert b"exception.status_code" in b"".join(receiver.bodies)
    # ... the forced 500 was logged, by route ...
    assert "unhandled error on PUT /v1/messaging/brands/{brand_id}/suppressions/{recipient}" in (
        web_log
    )
    assert "forced failure" in web_log
    # ... and the cursors, run events and spans were there to look at: a cursor after each
    # item but the last of every listing (after the canary's suppression among them).
    assert len(api.cursors) == 8 + 5 and len(run_events(events_sink)) >= 3
    assert {e["data"]["source"] for e in suppression_events(events_sink)} == {
        "provider:webhook",
        "provider:sendgrid",
        "api",
        "one_click",
    }
    assert any(s.name.startswith("PUT /v1/messaging/brands/") for s in receiver.spans)

    # The data canary reached the providers inside the messages, and came back only in the
    # preview that rendered it for its caller: no listing, no error body shows it.
    assert DATA in smtp.to("first@example.com")[0].message.get_content()
    assert any(PHONE in readable(r.body) and DATA in readable(r.body) for r in sink.requests)
    assert DATA in previewed
    assert where(DATA, answers) == []


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def unsubscribe_token(address: str) -> str:
    """The token of the address's link, as the worker makes it for a newsletter."""
    settings = Settings(public_base_url=PUBLIC_BASE_URL, unsubscribe_secrets=UNSUBSCRIBE_SECRET)
    keys = UnsubscribeKeys.of(settings)
    assert keys is not None
    return keys.token(brand_id=BRAND, topic="newsletter", address=address, run_id=uuid.uuid4())


def run_events(sink: HttpSink) -> list[Any]:
    return [r for r in list(sink.requests) if r.json()["type"].startswith("run.")]


def suppression_events(sink: HttpSink) -> list[Any]:
    """What the contract sends the platform's CRM: the address itself, to sync consent."""
    return [r.json() for r in list(sink.requests) if r.json()["type"] == "suppression.created"]


# Twilio: the same canary through the Twilio provider, its receipts and inbound texts.
TWILIO_PHONE = "+15558203917"
TWILIO_PERSON = "person-canary-twilio-j5r8"
TWILIO_CANARIES = (PHONE, TWILIO_PHONE, SMS_PERSON, TWILIO_PERSON)
PUBLIC = "https://messaging.example.com"  # a proxy's origin, in front of the web process


async def test_patient_data_stays_in_through_twilio(database_url, db, receiver, sink, tmp_path):
    """Twilio refuses one canary number quoting it (21610), delivers another and posts
    receipts for it, and the canary texts STOP, START and HELP, and a forged request
    quotes it: it shows only in the deliveries listing and the provider's words there."""
    twilio = TwilioStandIn()
    twilio.replies[PHONE] = TwilioReply(
        400, 21610, f"Attempt to send to unsubscribed recipient {PHONE} ({SMS_PERSON})"
    )
    twilio.receipts[TWILIO_PHONE] = ["sent", "undelivered:30003"]
    common = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "DATABASE_URL": database_url,
        "JWT_SECRET": TEST_SECRET,
        "LOG_LEVEL": "DEBUG",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_BASE_URL": PUBLIC,
    }
    port = free_port()
    twilio.callbacks_via = f"http://127.0.0.1:{port}"
    with twilio:
        web = start(web_command(port), common, tmp_path / "web.log")
        worker = start(
            [sys.executable, "-m", "jobs.worker"],
            {
                **common,
                "SMS_PROVIDER": "twilio",
                "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                "TWILIO_API_URL": twilio.url,
                "DELIVERY_MAX_ATTEMPTS": "1",
            },
            tmp_path / "worker.log",
        )
        try:
            async with httpx.AsyncClient(base_url=twilio.callbacks_via, timeout=30) as http:
                await until_ready(str(http.base_url), tmp_path / "web.log")
                api = Caller(http)
                sms_campaign = await campaign(api, "sms")
                people = [
                    {"person_id": SMS_PERSON, "recipient": PHONE},
                    {"person_id": TWILIO_PERSON, "recipient": TWILIO_PHONE},
                ]
                run = await api.request(
                    "POST", f"{CAMPAIGNS}/{sms_campaign}/publish", json={"recipients": people}
                )
                assert run.status_code == 202, run.text
                run_id = run.json()["id"]
                async with asyncio.timeout(60):
                    while await run_status(db, run_id) not in ENDED:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                callbacks = await asyncio.to_thread(twilio.post_callbacks)
                assert [c.answer for c in callbacks] == [200, 200]

                inbound = f"{PUBLIC}/v1/messaging/providers/twilio/inbound"
                for words in ("STOP", "START", "HELP", f"I am {TWILIO_PERSON}", "STOP"):
                    form = {"From": TWILIO_PHONE, "To": "+15550000000", "Body": words}
                    body, headers = signed_form(inbound, form)
                    texted = await api.request(
                        "POST", "/v1/messaging/providers/twilio/inbound", content=body,
                        headers=headers,
                    )  # fmt: skip
                    assert texted.status_code == 200, texted.text
                forged = {"From": TWILIO_PHONE, "To": "+15550000000", "Body": TWILIO_PERSON}
                body, headers = signed_form(inbound, forged, token="not-the-token")
                for path in ("inbound", "status"):
                    refused = await api.request(
                        "POST", f"/v1/messaging/providers/twilio/{path}", content=body,
                        headers=headers,
                    )  # fmt: skip
                    assert refused.status_code == 403

                listed = await api.walk(f"{CAMPAIGNS}/{sms_campaign}/runs/{run_id}/deliveries")
                metrics = (await api.request("GET", "/metrics")).text
                await stopped(worker, "the worker's exit on SIGTERM", tmp_path / "worker.log")
                await stopped(web, "the web process's exit on SIGTERM", tmp_path / "web.log")
        finally:
            for process in (web, worker):
                await killed(process)

    captured = {
        "web log": (tmp_path / "web.log").read_text(errors="replace"),
        "worker log": (tmp_path / "worker.log").read_text(errors="replace"),
        "spans": "\n".join(readable(body) for body in receiver.bodies),
        "metrics": metrics,
        **{f"error body {i}": body for i, body in enumerate(api.error_bodies)},
        **{f"cursor {i}": cursor for i, cursor in enumerate(api.cursors)},
    }
    for canary in TWILIO_CANARIES:
        assert where(canary, captured) == [], [captured[n][:2000] for n in where(canary, captured)]

    # The canary went everywhere it could: Twilio got both numbers and refused one,
    # quoting it, which the listing shows; the receipt and the texts were taken.
    assert {m.form["To"] for m in twilio.messages} == {PHONE, TWILIO_PHONE}
    shown = json.dumps(listed)
    assert f"unsubscribed recipient {PHONE} ({SMS_PERSON})" in shown
    assert [d["outcome"] for d in listed] == [None, "undelivered"]
    suppressed = await db.fetch("SELECT address, source FROM suppressions ORDER BY address")
    assert [tuple(s) for s in suppressed] == [
        (PHONE, "provider:twilio"),
        (TWILIO_PHONE, "sms_stop"),
    ]
    assert "an SMS opt-out" in captured["web log"] and "an SMS opt-in" in captured["web log"]
    sends = [s for s in receiver.spans if s.name == "send twilio"]
    assert len(sends) == 2 and sum(s.error for s in sends) == 1
    assert any(s.name.endswith("/v1/messaging/providers/twilio/inbound") for s in receiver.spans)
