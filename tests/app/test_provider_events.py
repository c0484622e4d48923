"""POST /v1/messaging/providers/{webhook,sendgrid}/events: provider feedback on deliveries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa as rsa_key
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.core.settings import SettingsError
from app.http.asgi import create_app
from tests.helpers import CAMPAIGNS, create_campaign, publish, recipients, walk
from tests.tokens import bearer

SECRET = "provider-secret"
WEBHOOK = "/v1/messaging/providers/webhook/events"
SENDGRID = "/v1/messaging/providers/sendgrid/events"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())


def sendgrid_public_key(private: ec.EllipticCurvePrivateKey) -> str:
    """As SendGrid's settings page shows it: base64 of the DER SubjectPublicKeyInfo."""
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@pytest.fixture
async def client(settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(
        replace(
            settings,
            webhook_secret=SECRET,
            sendgrid_webhook_public_key=sendgrid_public_key(SENDGRID_KEY),
        )
    )
    async with AsyncTestClient(app=app) as client:
        yield client


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Signature": f"sha256={digest}", "Content-Type": "application/json"}


async def post_events(client, events: list[dict[str, Any]], **kwargs: Any):
    body = json.dumps({"events": events}).encode()
    return await client.post(WEBHOOK, content=body, headers=signed(body, **kwargs))


def event(delivery_id: str, kind: str, detail: str | None = None, at: str = "2026-11-28T10:00:00Z"):
    return {"delivery_id": delivery_id, "type": kind, "occurred_at": at, "detail": detail}


async def sent_run(client, db, n: int = 4) -> tuple[dict, dict]:
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(n)})).json()
    await db.execute(
        "UPDATE deliveries SET status = 'sent', attempts = 1, sent_at = now() WHERE run_id = $1",
        uuid.UUID(run["id"]),
    )
    return campaign, run


async def listing(client, campaign, run) -> list[dict]:
    url = f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/deliveries"
    return await walk(client, url, bearer())


async def suppression(client, address: str) -> Any:
    response = await client.get(
        f"/v1/messaging/brands/brand-a/suppressions/{address}", headers=bearer()
    )
    return response.json() if response.status_code == 200 else None


async def test_outcomes_show_in_the_listing_and_bounces_and_complaints_suppress(client, db):
    campaign, run = await sent_run(client, db)
    rid = run["id"]

    response = await post_events(
        client,
        [
            event(f"{rid}:0", "delivered", "250 OK"),
            event(f"{rid}:1", "bounced", "550 5.1.1 no such user"),
            event(f"{rid}:2", "complained", at="2026-11-28T11:30:00+01:00"),
        ],
    )

    assert response.status_code == 200, response.text
    assert response.json() == {
        "received": 3,
        "applied": 3,
        "ignored": 0,
        "unknown_delivery_ids": [],
        "invalid_events": {},
    }
    items = await listing(client, campaign, run)
    assert [(d["outcome"], d["outcome_detail"]) for d in items] == [
        ("delivered", "250 OK"),
        ("bounced", "550 5.1.1 no such user"),
        ("complained", None),
        (None, None),
    ]
    assert items[2]["outcome_at"] == "2026-11-28T10:30:00Z"
    assert (await suppression(client, "user0@example.com")) is None
    assert (await suppression(client, "user1@example.com"))["reason"] == "bounced"
    assert (await suppression(client, "user2@example.com"))["reason"] == "complained"
    # The next publish of the brand skips them.
    again = (await publish(client, campaign["id"], {"recipients": recipients(3)})).json()
    assert again["skipped_count"] == 2


async def test_a_replay_changes_nothing_and_late_news_never_lowers_an_outcome(client, db):
    campaign, run = await sent_run(client, db)
    rid = run["id"]
    events = [event(f"{rid}:0", "bounced", "550"), event(f"{rid}:1", "delivered")]
    await post_events(client, events)
    before = await listing(client, campaign, run)
    await client.delete(
        "/v1/messaging/brands/brand-a/suppressions/user0@example.com", headers=bearer()
    )

    replay = await post_events(client, events)
    late = await post_events(client, [event(f"{rid}:0", "delivered", at="2026-11-28T12:00:00Z")])

    assert replay.json()["applied"] == 0 and late.json()["applied"] == 0
    assert await listing(client, campaign, run) == before
    # The replay did not suppress again what an operator chose to send to again.
    assert (await suppression(client, "user0@example.com")) is None
    upgraded = await post_events(client, [event(f"{rid}:1", "complained")])
    assert upgraded.json()["applied"] == 1
    assert (await listing(client, campaign, run))[1]["outcome"] == "complained"


async def test_unknown_delivery_ids_are_listed_and_the_others_still_apply(client, db):
    campaign, run = await sent_run(client, db, n=2)
    rid = run["id"]
    missing = f"{uuid.uuid4()}:0"

    response = await post_events(
        client,
        [
            event(missing, "bounced"),
            event(f"{rid}:1", "bounced"),
            event("not-one-of-ours", "delivered"),
            event(f"{rid}:99", "delivered"),
        ],
    )

    assert response.status_code == 200
    body = response.json()
    assert body["applied"] == 1
    assert sorted(body["unknown_delivery_ids"]) == sorted([missing, "not-one-of-ours", f"{rid}:99"])
    assert [d["outcome"] for d in await listing(client, campaign, run)] == [None, "bounced"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Signature": "sha256=" + "0" * 64},
        {"X-Signature": "not even a signature"},
        "wrong secret",
    ],
    ids=["none", "wrong", "garbage", "wrong-secret"],
)
async def test_anything_but_the_right_signature_is_401_and_changes_nothing(client, db, headers):
    campaign, run = await sent_run(client, db, n=1)
    body = json.dumps({"events": [event(f"{run['id']}:0", "bounced")]}).encode()
    if headers == "wrong secret":
        headers = signed(body, secret="another-secret")

    response = await client.post(
        WEBHOOK, content=body, headers={"Content-Type": "application/json", **headers}
    )

    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert (await listing(client, campaign, run))[0]["outcome"] is None
    assert (await suppression(client, "user0@example.com")) is None


async def test_without_a_webhook_secret_every_request_is_401(settings, db):
    async with AsyncTestClient(create_app(settings)) as client:
        body = json.dumps({"events": [event(f"{uuid.uuid4()}:0", "bounced")]}).encode()
        for headers in ({}, signed(body, secret="")):
            response = await client.post(WEBHOOK, content=body, headers=headers)
            assert response.status_code == 401


async def test_a_malformed_body_is_400_with_its_path(client):
    cases = [
        ({"events": []}, "$.events"),
        ({"events": [event("x:1", "delivered")] * 1001}, "$.events"),
        ({"events": {}}, "$.events"),
        ({}, "$"),
        ([], "$"),
    ]
    for payload, path in cases:
        body = json.dumps(payload).encode()
        response = await client.post(WEBHOOK, content=body, headers=signed(body))
        assert response.status_code == 400, (payload, response.text)
        assert response.json()["error"] == "validation_error"
        assert list(response.json()["details"]) == [path], payload

    not_json = b"{"
    response = await client.post(WEBHOOK, content=not_json, headers=signed(not_json))
    assert response.status_code == 400


async def test_events_not_of_the_format_are_skipped_and_reported_and_the_others_apply(client, db):
    """A 400 would make the provider post the whole batch again for ever, its good events
    with it: each event stands alone."""
    campaign, run = await sent_run(client, db, n=2)
    rid = run["id"]
    good = [event(f"{rid}:0", "bounced", "550"), event(f"{rid}:1", "delivered")]
    bad = [
        event(f"{rid}:0", "opened"),
        {"delivery_id": f"{rid}:0", "type": "delivered"},
        event(f"{rid}:0", "delivered", at="yesterday"),
        event(f"{rid}:0", "delivered", at="2026-11-28T10:00:00"),
        event(f"{rid}:0", "complained", at="9999-12-31T23:59:59-14:00"),
        event(f"{rid}:0", "complained", at="0001-01-01T00:00:00+14:00"),
        event(f"{rid}:0", "complained", at="1969-12-31T23:59:59Z"),
        "not an event",
    ]

    response = await post_events(client, [good[0], *bad, good[1]])

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["received"], body["applied"], body["ignored"]) == (10, 2, 0)
    assert list(body["invalid_events"]) == [
        "$.events[1].type",
        "$.events[2]",
        "$.events[3].occurred_at",
        "$.events[4].occurred_at",
        "$.events[5].occurred_at",
        "$.events[6].occurred_at",
        "$.events[7].occurred_at",
        "$.events[8]",
    ]
    assert body["invalid_events"]["$.events[2]"] == "Object missing required field `occurred_at`"
    assert [d["outcome"] for d in await listing(client, campaign, run)] == [
        "bounced",
        "delivered",
    ]


async def test_a_thousand_events_apply_and_a_body_over_the_limit_is_413(client, db):
    _, run = await sent_run(client, db, n=1000)
    events = [event(f"{run['id']}:{i}", "delivered", "250 OK") for i in range(1000)]

    response = await post_events(client, events)

    assert response.status_code == 200
    assert response.json()["applied"] == 1000
    huge = json.dumps({"events": [event("x:1", "delivered", "x" * 1000)] * 2200}).encode()
    response = await client.post(WEBHOOK, content=huge, headers=signed(huge))
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


# SendGrid's Event Webhook


def sendgrid_headers(
    body: bytes, key: ec.EllipticCurvePrivateKey = SENDGRID_KEY, timestamp: str | None = None
) -> dict:
    """Signed as SendGrid signs: now, unless `timestamp` says otherwise."""
    timestamp = timestamp or str(int(time.time()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def sendgrid_event(kind: str, delivery_id: str | None, **fields: Any) -> dict[str, Any]:
    """A SendGrid event as it posts them; custom arguments are top-level keys."""
    body = {
        "email": "someone@example.com",
        "timestamp": 1795860000,
        "event": kind,
        "sg_event_id": uuid.uuid4().hex,
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        **fields,
    }
    if delivery_id is not None:
        body["delivery_id"] = delivery_id
    return body


async def test_sendgrid_events_signed_with_ecdsa_set_outcomes(client, db):
    campaign, run = await sent_run(client, db, n=5)
    rid = run["id"]
    events = [
        sendgrid_event("processed", f"{rid}:0"),
        sendgrid_event("delivered", f"{rid}:0", response="250 OK"),
        sendgrid_event("bounce", f"{rid}:1", type="bounce", reason="550 no such user"),
        sendgrid_event("bounce", f"{rid}:2", type="blocked", reason="421 try later"),
        sendgrid_event("spamreport", f"{rid}:3"),
        sendgrid_event("open", f"{rid}:4"),
        sendgrid_event("delivered", None),
    ]
    body = json.dumps(events).encode()

    response = await client.post(SENDGRID, content=body, headers=sendgrid_headers(body))

    assert response.status_code == 200, response.text
    assert response.json() == {
        "received": 7,
        "applied": 3,
        "ignored": 4,
        "unknown_delivery_ids": [],
        "invalid_events": {},
    }
    items = await listing(client, campaign, run)
    assert [(d["outcome"], d["outcome_detail"]) for d in items] == [
        ("delivered", "250 OK"),
        ("bounced", "550 no such user"),
        (None, None),
        ("complained", None),
        (None, None),
    ]
    assert items[0]["outcome_at"] == "2026-11-28T10:00:00Z"
    assert (await suppression(client, "user1@example.com"))["reason"] == "bounced"
    assert (await suppression(client, "user3@example.com"))["reason"] == "complained"
    assert (await suppression(client, "user2@example.com")) is None


async def test_a_malformed_sendgrid_body_is_400_with_its_path(client):
    for payload, path in [
        ({"events": []}, "$"),
        ("events", "$"),
        ([sendgrid_event("open", None)] * 1001, "$"),  # SendGrid posts at most 1,000
    ]:
        body = json.dumps(payload).encode()
        response = await client.post(SENDGRID, content=body, headers=sendgrid_headers(body))
        assert response.status_code == 400, response.text
        assert list(response.json()["details"]) == [path]


async def test_sendgrid_events_of_another_shape_are_skipped_and_reported(client, db):
    campaign, run = await sent_run(client, db, n=2)
    rid = run["id"]
    events = [
        sendgrid_event("open", f"{rid}:0", timestamp=1795860000.25),  # a float: still ours
        {"event": "delivered"},
        sendgrid_event("delivered", f"{rid}:0", timestamp=10**20),
        sendgrid_event("delivered", f"{rid}:0", timestamp="yesterday"),
        sendgrid_event("bounce", f"{rid}:0", type="bounce", timestamp=253_402_300_799),
        sendgrid_event("bounce", f"{rid}:0", type="bounce", timestamp=-1),
        ["not", "an", "event"],
        sendgrid_event("bounce", f"{rid}:1", type="bounce", reason="550 no such user"),
    ]
    body = json.dumps(events).encode()

    response = await client.post(SENDGRID, content=body, headers=sendgrid_headers(body))

    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["received"], result["applied"], result["ignored"]) == (8, 1, 1)
    assert list(result["invalid_events"]) == [
        "$[1]",
        "$[2].timestamp",
        "$[3].timestamp",
        "$[4].timestamp",
        "$[5].timestamp",
        "$[6]",
    ]
    assert [d["outcome"] for d in await listing(client, campaign, run)] == [None, "bounced"]


# Half a minute outside the 10 minutes, and inside them: the server reads its clock a
# moment after the test wrote the timestamp (in whole seconds), and 601 s ahead was within
# 600 s once that moment and the truncated fraction passed a second (a CI run, at load 6).
@pytest.mark.parametrize("seconds_from_now", [-630, 630, -(10**9)], ids=["old", "ahead", "1970"])
async def test_a_sendgrid_body_signed_more_than_ten_minutes_from_now_is_401(
    client, db, seconds_from_now
):
    """A signed body captured once cannot be replayed later (or ahead of time)."""
    campaign, run = await sent_run(client, db, n=1)
    body = json.dumps([sendgrid_event("bounce", f"{run['id']}:0", type="bounce")]).encode()
    long_ago = str(int(time.time()) + seconds_from_now)

    refused = await client.post(
        SENDGRID, content=body, headers=sendgrid_headers(body, timestamp=long_ago)
    )
    fresh = await client.post(
        SENDGRID,
        content=body,
        headers=sendgrid_headers(body, timestamp=str(int(time.time()) - 570)),
    )

    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized"
    assert fresh.status_code == 200
    assert (await listing(client, campaign, run))[0]["outcome"] == "bounced"


async def test_sendgrid_events_not_signed_by_its_key_are_401(client, db, settings):
    campaign, run = await sent_run(client, db, n=1)
    body = json.dumps([sendgrid_event("bounce", f"{run['id']}:0", type="bounce")]).encode()
    other_key = ec.generate_private_key(ec.SECP256R1())
    tampered = body.replace(b"bounce", b"bounce ")
    cases = [
        sendgrid_headers(body, other_key),
        {
            **sendgrid_headers(body),
            "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()) + 1),
        },
        {"Content-Type": "application/json"},
    ]
    for headers in cases:
        response = await client.post(SENDGRID, content=body, headers=headers)
        assert response.status_code == 401, headers
    response = await client.post(SENDGRID, content=tampered, headers=sendgrid_headers(body))
    assert response.status_code == 401
    assert (await listing(client, campaign, run))[0]["outcome"] is None

    async with AsyncTestClient(create_app(settings)) as unconfigured:
        response = await unconfigured.post(SENDGRID, content=body, headers=sendgrid_headers(body))
        assert response.status_code == 401


def test_web_refuses_to_start_with_a_sendgrid_key_it_cannot_read(settings):
    with pytest.raises(SettingsError, match="SENDGRID_WEBHOOK_PUBLIC_KEY"):
        create_app(replace(settings, sendgrid_webhook_public_key="not a key"))
    rsa = rsa_key.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = rsa.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(SettingsError, match="EC"):  # SendGrid signs with P-256
        create_app(replace(settings, sendgrid_webhook_public_key=base64.b64encode(der).decode()))
