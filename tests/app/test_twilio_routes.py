"""Twilio's requests to us: delivery receipts (status callbacks) and inbound texts (STOP,
START), signed with X-Twilio-Signature; in-process, on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from app.core.signing import twilio_signature, twilio_signature_matches
from app.services.twilio import form_fields
from tests.fakes.twilio import AUTH_TOKEN, signed_form
from tests.helpers import CAMPAIGNS, create_campaign, publish
from tests.tokens import bearer

BASE = "http://testserver.local"  # the test client's origin: PUBLIC_BASE_URL here
STATUS = "/v1/messaging/providers/twilio/status"
INBOUND = "/v1/messaging/providers/twilio/inbound"
OURS = "+15550000000"  # what create_campaign's SMS campaigns send from
PATIENT = "+15557654321"


@pytest.fixture
def settings(settings):
    return replace(settings, twilio_auth_token=AUTH_TOKEN, public_base_url=BASE)


async def post(client: Any, path: str, form: dict[str, str], url: str | None = None) -> Any:
    """`form` posted to `path` as Twilio posts it, signed over `url` (default: as
    PUBLIC_BASE_URL makes it)."""
    body, headers = signed_form(url or BASE + path, form)
    response = await client.post(path, content=body, headers=headers)
    if response.status_code == 200:
        assert response.headers["content-type"].startswith("text/xml")
        assert response.content == b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
    return response


def test_the_signature_is_twilios_published_example():
    params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+12349013030"),
        ("Digits", "1234"),
        ("From", "+12349013030"),
        ("To", "+18005551212"),
    ]
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"

    assert twilio_signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert twilio_signature("12345", url, reversed(params)) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    # As Twilio's validators: the URL with its default port, or without it, both match.
    with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    assert twilio_signature_matches("12345", with_port, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
    assert twilio_signature_matches("12345", url, params, " 0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
    assert not twilio_signature_matches("54321", url, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
    assert not twilio_signature_matches("12345", url, params[1:], "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
    assert not twilio_signature_matches(None, url, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")


async def sent_sms(client: Any, db: Any, numbers: list[str]) -> tuple[str, str, list[str]]:
    """A run of an SMS campaign to `numbers`, each sent through Twilio with a sid:
    (campaign id, run id, sids)."""
    campaign = await create_campaign(client, channel="sms")
    people = [{"person_id": f"p{i}", "recipient": n} for i, n in enumerate(numbers)]
    run = (await publish(client, campaign["id"], {"recipients": people})).json()
    sids = [f"SM{uuid.uuid4().hex}" for _ in numbers]
    for position, sid in enumerate(sids):
        await record_sent(db, run["id"], position, sid)
    return campaign["id"], run["id"], sids


async def record_sent(db: Any, run_id: str, position: int, sid: str) -> None:
    """What the worker's record writes for a send Twilio took as `sid`."""
    await db.execute(
        "UPDATE deliveries SET status = 'sent', provider_message_id = $3, sent_at = now()"
        " WHERE run_id = $1 AND position = $2",
        uuid.UUID(run_id),
        position,
        sid,
    )
    await db.execute(
        "INSERT INTO awaited_receipts (message_id, run_id, position) VALUES ($1, $2, $3)",
        sid,
        uuid.UUID(run_id),
        position,
    )


async def listed(client: Any, campaign_id: str, run_id: str) -> list[dict[str, Any]]:
    response = await client.get(
        f"{CAMPAIGNS}/{campaign_id}/runs/{run_id}/deliveries", headers=bearer()
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def receipt(sid: str, status: str, **more: str) -> dict[str, str]:
    return {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "To": PATIENT, **more}


async def test_delivered_undelivered_and_failed_set_the_outcome_and_repeats_change_nothing(
    client, db
):
    numbers = ["+15557000001", "+15557000002", "+15557000003", "+15557000004"]
    campaign_id, run_id, sids = await sent_sms(client, db, numbers)

    for sid, status in [(sids[0], "sent"), (sids[1], "queued"), (sids[3], "sending")]:
        assert (await post(client, STATUS, receipt(sid, status))).status_code == 200
    assert [d["outcome"] for d in await listed(client, campaign_id, run_id)] == [None] * 4

    await post(client, STATUS, receipt(sids[0], "delivered"))
    await post(client, STATUS, receipt(sids[1], "undelivered", ErrorCode="30003"))
    await post(client, STATUS, receipt(sids[2], "failed", ErrorCode="30008"))
    first = await listed(client, campaign_id, run_id)

    assert [(d["outcome"], d["outcome_detail"]) for d in first] == [
        ("delivered", None),
        ("undelivered", "Twilio: undelivered, error 30003"),
        ("undelivered", "Twilio: failed, error 30008"),
        (None, None),
    ]
    # Repeats, and a late `delivered` after `undelivered`, change nothing.
    await post(client, STATUS, receipt(sids[0], "delivered"))
    await post(client, STATUS, receipt(sids[1], "undelivered", ErrorCode="30003"))
    await post(client, STATUS, receipt(sids[1], "delivered"))
    assert await listed(client, campaign_id, run_id) == first
    # An undelivered text suppresses nothing: the next text may well arrive.
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    # Only the send without a final receipt is still awaited.
    assert await db.fetchval("SELECT message_id FROM awaited_receipts") == sids[3]


async def test_an_unknown_sid_is_ignored_with_200(client, db):
    campaign_id, run_id, _ = await sent_sms(client, db, [PATIENT])

    response = await post(client, STATUS, receipt(f"SM{uuid.uuid4().hex}", "delivered"))

    assert response.status_code == 200
    assert [d["outcome"] for d in await listed(client, campaign_id, run_id)] == [None]


async def test_a_receipt_that_comes_before_its_send_is_recorded_still_sets_the_outcome(
    client, db, live_server
):
    """Twilio may post a receipt before the worker's window has recorded the sid (the
    record follows the window's slowest send): it is looked up again for 2 s. Against a
    real server, so that the record lands while the request waits."""
    campaign = await create_campaign(client, channel="sms")
    people = [{"person_id": "p0", "recipient": PATIENT}]
    run = (await publish(client, campaign["id"], {"recipients": people})).json()
    sid = f"SM{uuid.uuid4().hex}"

    async def record_later() -> None:
        await asyncio.sleep(0.3)
        await record_sent(db, run["id"], 0, sid)

    recording = asyncio.create_task(record_later())
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        response = await post(http, STATUS, receipt(sid, "delivered"))
    await recording

    assert response.status_code == 200
    (delivery,) = await listed(client, campaign["id"], run["id"])
    assert delivery["outcome"] == "delivered"


async def test_a_request_signed_with_or_without_the_default_port_is_taken(client, db):
    campaign_id, run_id, sids = await sent_sms(client, db, ["+15557000001", "+15557000002"])

    with_port = await post(client, STATUS, receipt(sids[0], "delivered"), f"{BASE}:80{STATUS}")
    without = await post(client, STATUS, receipt(sids[1], "delivered"), BASE + STATUS)

    assert with_port.status_code == without.status_code == 200
    outcomes = [d["outcome"] for d in await listed(client, campaign_id, run_id)]
    assert outcomes == ["delivered", "delivered"]


@pytest.mark.parametrize("path", [STATUS, INBOUND])
async def test_a_bad_or_missing_signature_is_403_and_changes_nothing(client, db, path):
    campaign_id, run_id, sids = await sent_sms(client, db, [PATIENT])
    form = {**receipt(sids[0], "delivered"), "From": PATIENT, "To": OURS, "Body": "STOP"}
    body, headers = signed_form(BASE + path, form)
    tampered = body.replace(b"STOP", b"HELP")
    unsigned = {"Content-Type": headers["Content-Type"]}
    other_token = signed_form(BASE + path, form, token="another-account-token")[1]
    other_host = signed_form("http://attacker.example" + path, form)[1]  # a forged Host
    with_query = signed_form(BASE + path, form)[1]

    answers = [
        await client.post(path, content=tampered, headers=headers),
        await client.post(path, content=body, headers=unsigned),
        await client.post(path, content=body, headers=other_token),
        await client.post(path, content=body, headers={**other_host, "Host": "attacker.example"}),
        await client.post(f"{path}?x=1", content=body, headers=with_query),
        await client.post(path, content=body + b"&x=%FF", headers=headers),  # not UTF-8
    ]

    for answer in answers:
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"] == "forbidden"
        assert set(answer.json()) <= {"error", "message", "details"}
        assert PATIENT not in answer.text
    assert [d["outcome"] for d in await listed(client, campaign_id, run_id)] == [None]
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_without_twilio_settings_every_request_is_403(settings, db):
    from litestar.testing import AsyncTestClient

    from app.http.asgi import create_app

    # Without PUBLIC_BASE_URL, unsubscribe links cannot be made either.
    no_base = {"public_base_url": None, "unsubscribe_secrets": None}
    for unset in ({"twilio_auth_token": None}, no_base):
        async with AsyncTestClient(app=create_app(replace(settings, **unset))) as client:
            response = await post(client, INBOUND, {"From": PATIENT, "To": OURS, "Body": "STOP"})
            assert response.status_code == 403


async def test_a_query_string_twilio_was_given_is_part_of_what_it_signed(client, db):
    await create_campaign(client, channel="sms")
    path = f"{INBOUND}?brand=ignored&x=%20y"
    form = {"From": PATIENT, "To": OURS, "Body": "STOP"}

    response = await post(client, path, form, BASE + path)

    assert response.status_code == 200
    assert await suppressed(db, PATIENT) == {"brand-a": ("unsubscribed", "sms_stop")}


async def suppressed(db: Any, address: str) -> dict[str, tuple[str, str]]:
    rows = await db.fetch(
        "SELECT brand_id, reason, source FROM suppressions WHERE address = $1", address
    )
    return {row["brand_id"]: (row["reason"], row["source"]) for row in rows}


def text(body: str, **more: str) -> dict[str, str]:
    return {
        "AccountSid": "AC1",
        "MessageSid": f"SM{uuid.uuid4().hex}",
        "From": PATIENT,
        "To": OURS,
        "Body": body,
        **more,
    }


@pytest.mark.parametrize(
    "form",
    [
        text("STOP"),
        text(" stop\n"),
        text("Unsubscribe"),
        text("stopall"),
        text("cancel"),
        text("END"),
        text("quit"),
        text("Revoke"),
        text("OPTOUT"),
        text("Arrêt", OptOutType="STOP"),  # a keyword a Messaging Service added
    ],
)
async def test_an_opt_out_word_suppresses_the_sender_for_every_brand_texting_from_that_number(
    client, db, form
):
    for brand in ("brand-a", "brand-b"):
        await create_campaign(client, brand=brand, channel="sms", activate=False)
    await create_campaign(client, brand="brand-c", channel="email")  # e-mail: not from OURS
    other = await client.post(
        CAMPAIGNS,
        json={"brand_id": "brand-d", "name": "n", "channel": "sms", "body": "b",
              "sender": "+15559999999"},
        headers=bearer(brands=["brand-d"]),
    )  # fmt: skip
    assert other.status_code == 201

    assert (await post(client, INBOUND, form)).status_code == 200

    stopped = ("unsubscribed", "sms_stop")
    assert await suppressed(db, PATIENT) == {"brand-a": stopped, "brand-b": stopped}
    shown = await client.get(
        f"/v1/messaging/brands/brand-b/suppressions/{PATIENT}", headers=bearer(brands=["*"])
    )
    assert shown.json()["reason"] == "unsubscribed"
    # A repeat changes nothing.
    assert (await post(client, INBOUND, form)).status_code == 200
    assert await suppressed(db, PATIENT) == {"brand-a": stopped, "brand-b": stopped}


@pytest.mark.parametrize(
    "form",
    [
        text("HELP"),
        text("INFO"),
        text("stop please"),
        text("STOP STOP"),
        text("S T O P"),
        text("\u017ftop"),  # upper-cased, the long s is an S: not a word that was sent
        text("STOP", OptOutType="HELP"),  # Twilio's own reading of the text wins
        text(""),
        text("STOP", From="whatsapp:+15557654321"),
        text("STOP", To=""),
        text("STOP", To="+15551112222"),  # no campaign texts from there
    ],
)
async def test_help_and_other_texts_change_nothing(client, db, form):
    await create_campaign(client, channel="sms")

    assert (await post(client, INBOUND, form)).status_code == 200

    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_start_lifts_only_the_recipients_own_opt_outs(client, db):
    for brand in ("brand-a", "brand-b", "brand-c", "brand-d", "brand-e"):
        await create_campaign(client, brand=brand, channel="sms")
    await post(client, INBOUND, text("STOP"))
    # Others' words about the number, which a START must never lift:
    every = bearer(brands=["*"])
    for brand, reason in [("brand-b", "manual"), ("brand-c", "bounced"), ("brand-d", "complained")]:
        url = f"/v1/messaging/brands/{brand}/suppressions/{PATIENT}"
        assert (await client.put(url, json={"reason": reason}, headers=every)).status_code == 200
    # ... nor a brand's own `unsubscribed` (PUT over the recipient's STOP).
    url = f"/v1/messaging/brands/brand-e/suppressions/{PATIENT}"
    put = await client.put(url, json={"reason": "unsubscribed"}, headers=every)
    assert put.status_code == 200
    # Twilio's 21610 of brand-a's sends: the recipient's own STOP, seen at send time.
    await db.execute(
        "UPDATE suppressions SET source = 'provider:twilio' WHERE brand_id = 'brand-a'"
    )

    assert (await post(client, INBOUND, text(" Start "))).status_code == 200

    assert await suppressed(db, PATIENT) == {
        "brand-b": ("manual", "api"),
        "brand-c": ("bounced", "api"),
        "brand-d": ("complained", "api"),
        "brand-e": ("unsubscribed", "api"),
    }


@pytest.mark.parametrize("form", [text("UNSTOP"), text("yes"), text("Hi", OptOutType="START")])
async def test_every_opt_in_word_lifts_the_opt_out(client, db, form):
    await create_campaign(client, channel="sms")
    await post(client, INBOUND, text("STOP"))
    assert await suppressed(db, PATIENT) != {}

    await post(client, INBOUND, form)

    assert await suppressed(db, PATIENT) == {}


async def test_through_the_messaging_service_a_stop_holds_for_every_brand_that_texts(settings, db):
    from litestar.testing import AsyncTestClient

    from app.http.asgi import create_app

    service = "MG" + "1" * 32
    app = create_app(replace(settings, twilio_messaging_service_sid=service))
    async with AsyncTestClient(app=app) as client:
        await create_campaign(client, brand="brand-a", channel="sms")
        await create_campaign(client, brand="brand-b", channel="sms")
        await create_campaign(client, brand="brand-c", channel="email")

        # To is one of the service's pool of numbers, not a campaign's sender.
        form = text("STOP", To="+15553334444", MessagingServiceSid=service)
        assert (await post(client, INBOUND, form)).status_code == 200
        stopped = ("unsubscribed", "sms_stop")
        assert await suppressed(db, PATIENT) == {"brand-a": stopped, "brand-b": stopped}

        # Another service's number is none of ours.
        other = text("STOP", From="+15557654322", To="+15553334444", MessagingServiceSid="MG2")
        await post(client, INBOUND, other)
        assert await suppressed(db, "+15557654322") == {}


@given(st.lists(st.tuples(st.text(), st.text()), max_size=8))
@hyp_settings(max_examples=300, deadline=None, derandomize=True)
def test_forms_are_decoded_as_the_standard_library_decodes_them(fields):
    body = urlencode(fields).encode()
    assert form_fields(body) == parse_qsl(body.decode(), keep_blank_values=True)


@given(st.text(alphabet=st.characters(max_codepoint=127, exclude_characters="#"), max_size=80))
@hyp_settings(max_examples=300, deadline=None, derandomize=True)
def test_any_ascii_body_is_decoded_as_the_standard_library_decodes_it(text):
    assert form_fields(text.encode()) == parse_qsl(text, keep_blank_values=True)
