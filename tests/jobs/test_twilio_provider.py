"""The Twilio provider against a local stand-in of Twilio's Messages API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest

from app.core.settings import Settings, SettingsError
from jobs.providers import (
    OptedOut,
    OutgoingMessage,
    PermanentError,
    Throttled,
    TransientError,
    TwilioProvider,
    build_providers,
    close_providers,
)
from tests.fakes.server import free_port
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioReply, TwilioStandIn

PUBLIC = "https://messaging.example.com"
PHONE = "+15557654321"


def message(**changes: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "delivery_id": "0193a8a4-4d2e-7000-8000-000000000001:3",
        "run_id": "0193a8a4-4d2e-7000-8000-000000000001",
        "campaign_id": "campaign-1",
        "brand_id": "brand-a",
        "channel": "sms",
        "person_id": "p3",
        "recipient": PHONE,
        "sender": "+15550000000",
        "subject": None,
        "body": "Your appointment is tomorrow at 9:00. Reply STOP to opt out.",
    }
    return OutgoingMessage(**{**fields, **changes})


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn() as twilio:
        yield twilio


def provider_for(twilio: TwilioStandIn, **options: Any) -> TwilioProvider:
    options = {"public_base": PUBLIC, "api_url": twilio.url, **options}
    return TwilioProvider(ACCOUNT_SID, AUTH_TOKEN, **options)


@pytest.fixture
async def provider(twilio: TwilioStandIn) -> AsyncIterator[TwilioProvider]:
    provider = provider_for(twilio)
    yield provider
    await provider.aclose()


async def test_a_send_is_the_form_with_basic_auth_and_the_sid_is_the_message_id(provider, twilio):
    result = await provider.send(message())

    (sent,) = twilio.messages
    assert sent.form == {
        "To": PHONE,
        "From": "+15550000000",
        "Body": "Your appointment is tomorrow at 9:00. Reply STOP to opt out.",
        "StatusCallback": f"{PUBLIC}/v1/messaging/providers/twilio/status",
    }
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert sent.headers["idempotency-key"] == "0193a8a4-4d2e-7000-8000-000000000001:3"
    assert result.provider_message_id == sent.sid and sent.sid.startswith("SM")
    assert twilio.refused_auth == 0


async def test_a_messaging_service_replaces_the_campaign_sender(twilio):
    provider = provider_for(twilio, messaging_service_sid="MG" + "a" * 32)
    try:
        await provider.send(message())
        await provider.send(message(sender=None))
    finally:
        await provider.aclose()

    assert [m.form.get("MessagingServiceSid") for m in twilio.messages] == ["MG" + "a" * 32] * 2
    assert all("From" not in m.form for m in twilio.messages)


async def test_no_sender_and_no_messaging_service_is_permanent_and_nothing_is_sent(
    provider, twilio
):
    with pytest.raises(PermanentError, match="no sender"):
        await provider.send(message(sender=None))
    assert twilio.messages == []


async def test_a_wrong_auth_token_is_refused_by_twilio_and_permanent(twilio):
    provider = TwilioProvider(ACCOUNT_SID, "not-the-token", public_base=PUBLIC, api_url=twilio.url)
    try:
        with pytest.raises(PermanentError) as caught:
            await provider.send(message())
    finally:
        await provider.aclose()
    assert caught.value.detail == "HTTP 401: Twilio error 20003: Authenticate"
    assert twilio.refused_auth == 1


async def test_21610_is_an_opt_out(provider, twilio):
    twilio.replies[PHONE] = TwilioReply(
        400, 21610, f"Attempt to send to unsubscribed recipient {PHONE}"
    )

    with pytest.raises(OptedOut) as caught:
        await provider.send(message())

    assert caught.value.detail == (
        f"HTTP 400: Twilio error 21610: Attempt to send to unsubscribed recipient {PHONE}"
    )
    assert caught.value.status_code == 400  # what the send's span shows: never the words


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (21211, "The 'To' number is not a valid phone number."),
        (21614, "'To' number is not a valid mobile number"),
        (21635, "'To' number cannot be a landline"),
    ],
)
async def test_other_refusals_are_permanent_with_twilios_code_and_message(
    provider, twilio, code, words
):
    twilio.replies[PHONE] = TwilioReply(400, code, words)

    with pytest.raises(PermanentError) as caught:
        await provider.send(message())

    assert not isinstance(caught.value, OptedOut | TransientError)
    assert caught.value.detail == f"HTTP 400: Twilio error {code}: {words}"


async def test_an_answer_that_is_not_twilios_json_keeps_its_start(provider, twilio):
    twilio.replies[PHONE] = TwilioReply(404, raw=b"<html>" + b"x" * 5000)

    with pytest.raises(PermanentError) as caught:
        await provider.send(message())

    assert caught.value.detail.startswith("HTTP 404: <html>xxx")
    assert len(caught.value.detail) < 600


@pytest.mark.parametrize(
    ("reply", "seconds"),
    [
        (TwilioReply(429, 20429, "Too Many Requests", {"Retry-After": "7"}), 7.0),
        (TwilioReply(429, 20429, "Too Many Requests"), None),
        (TwilioReply(400, 20429, "Too Many Requests"), None),  # the code, whatever the status
        (TwilioReply(503, None, headers={"Retry-After": "3"}, raw=b"busy"), 3.0),
    ],
)
async def test_throttling_is_throttled_for_what_twilio_asked(provider, twilio, reply, seconds):
    twilio.script.append(reply)

    with pytest.raises(Throttled) as caught:
        await provider.send(message())

    assert caught.value.retry_after_seconds == seconds


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_transient(provider, twilio, status):
    twilio.script.append(TwilioReply(status, 20500, "Internal Server Error"))

    with pytest.raises(TransientError) as caught:
        await provider.send(message())

    assert not isinstance(caught.value, Throttled)
    assert caught.value.detail == f"HTTP {status}: Twilio error 20500: Internal Server Error"


async def test_twilio_unreachable_is_transient():
    provider = TwilioProvider(
        ACCOUNT_SID, AUTH_TOKEN, public_base=PUBLIC, api_url=f"http://127.0.0.1:{free_port()}"
    )
    try:
        with pytest.raises(TransientError):
            await provider.send(message())
    finally:
        await provider.aclose()


async def test_sends_share_a_few_kept_alive_connections(twilio):
    provider = provider_for(twilio, max_connections=2)
    try:
        for n in range(6):
            await provider.send(message(delivery_id=f"d:{n}"))
    finally:
        await provider.aclose()
    assert len(twilio.messages) == 6
    assert twilio.connections <= 2


def twilio_settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {
        "sms_provider": "twilio",
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "public_base_url": PUBLIC + "/",
    }
    return replace(Settings(), **{**values, **changes})


async def test_sms_by_twilio_beside_email_by_log():
    providers = build_providers(twilio_settings(twilio_messaging_service_sid="MG1"))

    assert isinstance(providers["sms"], TwilioProvider)
    assert providers["email"].name == "log"
    await close_providers(providers)


@pytest.mark.parametrize(
    ("missing", "variable"),
    [
        ("twilio_account_sid", "TWILIO_ACCOUNT_SID"),
        ("twilio_auth_token", "TWILIO_AUTH_TOKEN"),
        ("public_base_url", "PUBLIC_BASE_URL"),
    ],
)
def test_twilio_refuses_to_start_without_its_settings_naming_the_missing_one(missing, variable):
    with pytest.raises(ValueError, match=f"SMS_PROVIDER=twilio needs {variable}$"):
        build_providers(twilio_settings(**{missing: None}))


def test_twilio_sends_sms_only():
    with pytest.raises(ValueError, match="EMAIL_PROVIDER=twilio is not possible"):
        build_providers(twilio_settings(email_provider="twilio"))
    with pytest.raises(SettingsError, match="EMAIL_PROVIDER='twilio'"):
        Settings.from_env({"EMAIL_PROVIDER": "twilio"})


@pytest.mark.parametrize(
    "url", ["messaging.example.com", "ftp://x.example", "https://x.example/?a=1", "https://x#y"]
)
def test_a_public_base_url_that_routes_cannot_follow_is_refused(url):
    with pytest.raises(SettingsError, match="PUBLIC_BASE_URL must be"):
        Settings.from_env({"PUBLIC_BASE_URL": url})
