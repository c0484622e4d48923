"""The delivery providers against real servers: an SMTP server and an HTTP receiver."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import json
import logging
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from app.core.logs import JsonFormatter
from app.core.settings import Settings
from app.core.unsubscribe import UnsubscribeKeys, unsubscribe_link
from jobs.providers import (
    LogProvider,
    OutgoingMessage,
    PermanentError,
    SmtpProvider,
    Throttled,
    TransientError,
    WebhookProvider,
    build_providers,
    close_providers,
)
from jobs.providers.smtp import StartTls
from tests.fakes.server import free_port
from tests.fakes.smtp import SmtpSink
from tests.fakes.tls import Tls
from tests.fakes.webhook import HttpSink, Reply
from tests.jobs.delivery_helpers import until

SECRET = "webhook-test-secret"
CONTRACT_FIELDS = [
    "delivery_id",
    "run_id",
    "campaign_id",
    "brand_id",
    "channel",
    "person_id",
    "recipient",
    "sender",
    "subject",
    "body",
    "html_body",
    "headers",  # third release (consent)
    "unsubscribe_url",
]


def message(n: int = 1, **changes: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "delivery_id": f"7c1e4a52-0000-4000-8000-{n:012d}",
        "run_id": "run-1",
        "campaign_id": "campaign-1",
        "brand_id": "brand-a",
        "channel": "email",
        "person_id": f"p{n}",
        "recipient": f"user{n}@example.com",
        "sender": "Care Team <care@example.com>",
        "subject": "Your check-up",
        "body": "Hello, it is time for your check-up.\nSee you soon.",
    }
    fields.update(changes)
    return OutgoingMessage(**fields)


@asynccontextmanager
async def smtp_provider(
    url: str, starttls: StartTls = "auto", **options: Any
) -> AsyncIterator[SmtpProvider]:
    provider = SmtpProvider(url, starttls, **options)
    try:
        yield provider
    finally:
        await provider.aclose()


@pytest.fixture(scope="module")
def tls() -> Tls:
    return Tls.create()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
async def smtp(smtp_sink: SmtpSink) -> AsyncIterator[SmtpProvider]:
    async with smtp_provider(smtp_sink.url()) as provider:
        yield provider


@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    with HttpSink() as sink:
        yield sink


@pytest.fixture
async def webhook(http_sink: HttpSink) -> AsyncIterator[WebhookProvider]:
    provider = WebhookProvider(http_sink.url, SECRET, timeout=0.5)
    yield provider
    await provider.aclose()


# --- SMTP ---------------------------------------------------------------------------------


async def test_smtp_delivers_the_email_with_its_headers_and_body(
    smtp: SmtpProvider, smtp_sink: SmtpSink
) -> None:
    result = await smtp.send(message(1))

    [mail] = smtp_sink.messages
    assert mail.mail_from == "care@example.com"
    assert mail.rcpt_tos == ["user1@example.com"]
    assert mail.message["From"] == "Care Team <care@example.com>"
    assert mail.message["To"] == "user1@example.com"
    assert mail.message["Subject"] == "Your check-up"
    assert mail.message["Message-ID"] == "<7c1e4a52-0000-4000-8000-000000000001@messaging>"
    assert mail.message["X-Delivery-ID"] == "7c1e4a52-0000-4000-8000-000000000001"
    assert mail.message["Date"] is not None
    assert mail.message.get_content() == "Hello, it is time for your check-up.\nSee you soon.\n"
    assert result.provider_message_id == mail.message["Message-ID"]


async def test_smtp_carries_the_longest_unsubscribe_headers_intact(
    smtp: SmtpProvider, smtp_sink: SmtpSink
) -> None:
    """The longest link there can be (a 100-character brand, a 64-character topic, a
    254-character address) with its mailto: folded onto lines, never broken inside a URL."""
    settings = Settings(
        public_base_url="https://messaging.example.com",
        unsubscribe_secrets="provider-test-unsubscribe-key",
        unsubscribe_mailto="unsubscribe@example.com",
    )
    keys = UnsubscribeKeys.of(settings)
    assert keys is not None
    address = "a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".example"
    link = unsubscribe_link(
        keys, brand_id="B" * 100, topic="t" * 64, channel="email", address=address[:254],
        run_id=uuid.uuid4(),
    )  # fmt: skip

    await smtp.send(message(1, headers=link.headers, unsubscribe_url=link.url))

    [mail] = smtp_sink.messages
    unfolded = " ".join(mail.message["List-Unsubscribe"].split())
    assert unfolded == link.headers["List-Unsubscribe"]
    assert unfolded.startswith(f"<{link.url}>, <mailto:unsubscribe@example.com?subject=")
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert keys.read(link.url.rsplit("/", 1)[1]) is not None


async def test_smtp_sends_unsubscribe_links_of_every_length_as_plain_uris(
    smtp: SmtpProvider, smtp_sink: SmtpSink
) -> None:
    """Python's folder would turn a link longer than a line into RFC 2047 encoded-words,
    which an unsubscribe button does not read (and drop the space between the URIs): it
    happened to about 2% of real links, by their random token length."""
    keys = UnsubscribeKeys.of(
        Settings(
            public_base_url="https://messaging.example.com",
            unsubscribe_secrets="provider-test-unsubscribe-key",
            unsubscribe_mailto="unsubscribe@example.com",
        )
    )
    assert keys is not None
    links = [
        unsubscribe_link(
            keys, brand_id="A", topic="news", channel="email",
            address="p" * length + "@example.com", run_id=uuid.uuid4(),
        )
        for length in range(1, 65)
    ]  # fmt: skip

    for n, link in enumerate(links):
        await smtp.send(message(n, headers=link.headers, unsubscribe_url=link.url))

    assert len(smtp_sink.messages) == len(links)
    for mail, link in zip(smtp_sink.messages, links, strict=True):
        raw = dict(mail.message.raw_items())["List-Unsubscribe"]
        assert "=?" not in raw
        assert raw.replace("\n ", " ") == link.headers["List-Unsubscribe"]


async def test_smtp_keeps_non_ascii_subject_and_body_intact(
    smtp: SmtpProvider, smtp_sink: SmtpSink
) -> None:
    await smtp.send(message(1, subject="Rappel : votre bilan", body="Bonjour Zoë, à bientôt ✓"))

    [mail] = smtp_sink.messages
    assert mail.message["Subject"] == "Rappel : votre bilan"
    assert mail.message.get_content() == "Bonjour Zoë, à bientôt ✓\n"


async def test_smtp_451_is_transient_and_keeps_the_server_answer(
    smtp: SmtpProvider, smtp_sink: SmtpSink
) -> None:
    smtp_sink.replies["user1@example.com"] = "451 4.3.0 Mailbox temporarily unavailable"

    with pytest.raises(TransientError) as caught:
        await smtp.send(message(1))

    assert caught.value.detail == "SMTP 451: 4.3.0 Mailbox temporarily unavailable"
    assert smtp_sink.messages == []


async def test_smtp_550_is_permanent_and_the_next_message_still_goes_out(
    smtp: SmtpProvider, smtp_sink: SmtpSink
) -> None:
    smtp_sink.replies["user1@example.com"] = "550 5.1.1 No such user"

    with pytest.raises(PermanentError) as caught:
        await smtp.send(message(1))
    await smtp.send(message(2))

    assert caught.value.detail == "SMTP 550: 5.1.1 No such user"
    assert [mail.rcpt_tos for mail in smtp_sink.messages] == [["user2@example.com"]]


async def test_smtp_server_down_is_transient() -> None:
    async with smtp_provider(f"smtp://127.0.0.1:{free_port()}", timeout=2) as provider:
        with pytest.raises(TransientError) as caught:
            await provider.send(message(1))

    assert "SMTPConnectError" in caught.value.detail


async def test_smtp_reuses_a_small_pool_of_connections_for_concurrent_sends(
    smtp_sink: SmtpSink,
) -> None:
    async with smtp_provider(smtp_sink.url(), pool_size=3) as provider:
        results = await asyncio.gather(*(provider.send(message(n)) for n in range(30)))

    assert len(smtp_sink.messages) == 30
    assert {mail.message["Message-ID"] for mail in smtp_sink.messages} == {
        result.provider_message_id for result in results
    }
    assert len({mail.peer for mail in smtp_sink.messages}) <= 3


async def test_smtp_reconnects_after_the_server_closed_an_idle_connection() -> None:
    with SmtpSink(idle_timeout=0.2) as sink:
        async with smtp_provider(sink.url()) as provider:
            await provider.send(message(1))
            await asyncio.sleep(0.6)  # the server says 421 and hangs up
            await provider.send(message(2))

    assert [mail.rcpt_tos for mail in sink.messages] == [
        ["user1@example.com"],
        ["user2@example.com"],
    ]
    assert sink.messages[0].peer != sink.messages[1].peer


async def test_smtp_starttls_and_auth(tls: Tls) -> None:
    with SmtpSink(starttls=tls, logins={"mailer@example.com": "s3cret/pass"}) as sink:
        url = sink.url(userinfo="mailer%40example.com:s3cret%2Fpass")
        async with smtp_provider(url, "always", tls_context=tls.client) as provider:
            await provider.send(message(1, sender=None))

    [mail] = sink.messages
    assert mail.tls
    assert mail.login == "mailer@example.com"
    # A campaign without a sender goes out from the authenticated mailbox.
    assert mail.message["From"] == "mailer@example.com"


async def test_smtp_wrong_password_is_refused(tls: Tls) -> None:
    with SmtpSink(starttls=tls, logins={"mailer": "right"}) as sink:
        url = sink.url(userinfo="mailer:wrong")
        async with smtp_provider(url, tls_context=tls.client) as provider:
            with pytest.raises(PermanentError) as caught:
                await provider.send(message(1))

    assert caught.value.detail.startswith("SMTP 535")
    assert sink.messages == []


async def test_smtp_starttls_auto_upgrades_when_offered_and_never_does_not(tls: Tls) -> None:
    with SmtpSink(starttls=tls) as sink:
        async with smtp_provider(sink.url(), "auto", tls_context=tls.client) as auto:
            await auto.send(message(1))
        async with smtp_provider(sink.url(), "never", tls_context=tls.client) as never:
            await never.send(message(2))

    assert [mail.tls for mail in sink.messages] == [True, False]


async def test_smtp_starttls_always_refuses_a_server_without_it(
    smtp_sink: SmtpSink, tls: Tls
) -> None:
    async with smtp_provider(smtp_sink.url(), "always", tls_context=tls.client) as provider:
        with pytest.raises(PermanentError) as caught:
            await provider.send(message(1))

    assert "STARTTLS" in caught.value.detail
    assert smtp_sink.messages == []


async def test_smtps_uses_implicit_tls(tls: Tls) -> None:
    with SmtpSink(implicit_tls=tls) as sink:
        async with smtp_provider(sink.url("smtps"), tls_context=tls.client) as provider:
            await provider.send(message(1))

    assert [mail.tls for mail in sink.messages] == [True]


async def test_smtp_without_any_sender_is_permanent(
    smtp: SmtpProvider, smtp_sink: SmtpSink
) -> None:
    with pytest.raises(PermanentError, match="no sender"):
        await smtp.send(message(1, sender=None))

    assert smtp_sink.messages == []


async def test_smtp_refuses_a_subject_that_would_inject_headers(
    smtp: SmtpProvider, smtp_sink: SmtpSink
) -> None:
    with pytest.raises(PermanentError):
        await smtp.send(message(1, subject="Hi\r\nBcc: everyone@example.com"))

    assert smtp_sink.messages == []


class QuitCountingSmtpSink(SmtpSink):
    """Also records the client end of every connection that said QUIT."""

    def __init__(self) -> None:
        super().__init__()
        self.quits: list[tuple[str, int]] = []

    async def handle_QUIT(self, server: object, session: Any, envelope: object) -> str:
        self.quits.append(session.peer)
        return "221 Bye"


async def test_closing_the_smtp_provider_quits_every_connection_without_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with QuitCountingSmtpSink() as sink, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        provider = SmtpProvider(sink.url(), pool_size=3)
        await asyncio.gather(*(provider.send(message(n)) for n in range(9)))
        await provider.aclose()
        peers = {mail.peer for mail in sink.messages}
        await until(lambda: len(sink.quits) >= len(peers), seconds=2)
        gc.collect()

    assert len(sink.messages) == 9
    assert sorted(sink.quits) == sorted(peers)
    assert len(peers) <= 3
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_smtp_sends_an_html_body_as_multipart_alternative_beside_the_text(
    smtp: SmtpProvider, smtp_sink: SmtpSink
) -> None:
    html = "<p>Hello <b>Zoë</b>, see you at 15:30.</p>"
    await smtp.send(message(1, body="Hello Zoë, see you at 15:30.", html_body=html))

    [mail] = smtp_sink.messages
    assert mail.message.get_content_type() == "multipart/alternative"
    text, rich = mail.message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert text.get_content() == "Hello Zoë, see you at 15:30.\n"
    assert rich.get_content_type() == "text/html"
    assert rich.get_content() == html + "\n"


async def test_webhook_message_carries_the_html_body(
    webhook: WebhookProvider, http_sink: HttpSink
) -> None:
    await webhook.send(message(1, html_body="<p>Hello</p>"))

    [request] = http_sink.requests
    assert request.json()["html_body"] == "<p>Hello</p>"
    assert request.json()["body"] == "Hello, it is time for your check-up.\nSee you soon."


def test_smtp_url_must_be_smtp_or_smtps() -> None:
    with pytest.raises(ValueError, match="SMTP_URL"):
        SmtpProvider("http://mail.example.com", "auto")


# --- Webhook ------------------------------------------------------------------------------


async def test_webhook_posts_the_contract_message_signed_with_the_secret(
    webhook: WebhookProvider, http_sink: HttpSink
) -> None:
    sent = message(1, channel="sms", recipient="+15551234567", sender=None, subject=None)

    await webhook.send(sent)

    [request] = http_sink.requests
    assert request.method == "POST"
    assert request.path == "/hooks/messages"
    assert request.headers["content-type"] == "application/json"
    assert list(request.json()) == CONTRACT_FIELDS
    assert request.json() == {
        "delivery_id": sent.delivery_id,
        "run_id": "run-1",
        "campaign_id": "campaign-1",
        "brand_id": "brand-a",
        "channel": "sms",
        "person_id": "p1",
        "recipient": "+15551234567",
        "sender": None,
        "subject": None,
        "body": sent.body,
        "html_body": None,
        "headers": {},
        "unsubscribe_url": None,
    }
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-signature"] == f"sha256={expected}"
    assert request.headers["idempotency-key"] == sent.delivery_id


async def test_webhook_json_id_becomes_the_provider_message_id(
    webhook: WebhookProvider, http_sink: HttpSink
) -> None:
    http_sink.default = Reply(200, b'{"id": "msg_42", "status": "queued"}')
    assert (await webhook.send(message(1))).provider_message_id == "msg_42"

    http_sink.default = Reply(202, b"accepted")
    assert (await webhook.send(message(2))).provider_message_id is None


async def test_webhook_retries_carry_the_same_idempotency_key(
    webhook: WebhookProvider, http_sink: HttpSink
) -> None:
    http_sink.replies["user1@example.com"] = Reply(503, b"busy")
    with pytest.raises(TransientError):
        await webhook.send(message(1))
    del http_sink.replies["user1@example.com"]
    await webhook.send(message(1))

    keys = [request.headers["idempotency-key"] for request in http_sink.requests]
    assert keys == [message(1).delivery_id] * 2
    assert http_sink.requests[0].body == http_sink.requests[1].body


@pytest.mark.parametrize("status", [408, 429, 500, 503])
async def test_webhook_busy_or_failing_receiver_is_transient(
    webhook: WebhookProvider, http_sink: HttpSink, status: int
) -> None:
    http_sink.default = Reply(status, b'{"error": "try later"}')

    with pytest.raises(TransientError) as caught:
        await webhook.send(message(1))

    assert caught.value.detail == f'HTTP {status}: {{"error": "try later"}}'


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_webhook_client_error_is_permanent(
    webhook: WebhookProvider, http_sink: HttpSink, status: int
) -> None:
    http_sink.default = Reply(status, b'{"error": "unknown recipient"}')

    with pytest.raises(PermanentError) as caught:
        await webhook.send(message(1))

    assert caught.value.detail == f'HTTP {status}: {{"error": "unknown recipient"}}'


async def test_webhook_detail_keeps_only_the_start_of_a_long_answer(
    webhook: WebhookProvider, http_sink: HttpSink
) -> None:
    http_sink.default = Reply(500, b"x" * 5000)

    with pytest.raises(TransientError) as caught:
        await webhook.send(message(1))

    assert caught.value.detail == "HTTP 500: " + "x" * 500


async def test_webhook_timeout_is_transient(webhook: WebhookProvider, http_sink: HttpSink) -> None:
    http_sink.default = Reply(delay=60)

    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        await webhook.send(message(1))

    # Given up after the 0.5 s timeout, not after the receiver's 60 s: a bound far from
    # both, which no 2-3x swing of this shared machine can cross.
    assert time.monotonic() - started < 10
    assert caught.value.detail == "Timeout: no complete answer within 0.5 s"


async def test_webhook_timeout_bounds_the_whole_send_even_when_the_answer_trickles() -> None:
    # A receiver that answers at once, then one byte of its body every 0.1 s.
    finished = asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.1)
        except ConnectionError:
            pass  # the client gave up
        finally:
            writer.close()
            finished.set()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = WebhookProvider(f"http://127.0.0.1:{port}/hook", SECRET, timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(TransientError) as caught:
            await provider.send(message(1))
        took = time.monotonic() - started
        await asyncio.wait_for(finished.wait(), 5)
    finally:
        await provider.aclose()
        server.close()
        await server.wait_closed()

    assert caught.value.detail == "Timeout: no complete answer within 0.5 s"
    # The answer trickles for 10 s; the 0.5 s timeout bounds the whole send. 5 s is far
    # from both: no 2-3x swing of this shared machine crosses it.
    assert 0.5 <= took < 5


async def test_webhook_receiver_down_is_transient() -> None:
    port = free_port()
    provider = WebhookProvider(f"http://127.0.0.1:{port}/hook", SECRET)
    with pytest.raises(TransientError) as caught:
        await provider.send(message(1))
    await provider.aclose()

    assert f"Cannot connect to host 127.0.0.1:{port}" in caught.value.detail


async def test_webhook_refuses_a_receiver_whose_certificate_is_not_trusted(tls: Tls) -> None:
    with HttpSink(tls=tls) as sink:
        provider = WebhookProvider(sink.url, SECRET, timeout=2)
        try:
            with pytest.raises(TransientError) as caught:
                await provider.send(message(1))
        finally:
            await provider.aclose()

    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.detail
    assert sink.requests == []


async def test_webhook_reuses_its_connection(webhook: WebhookProvider, http_sink: HttpSink) -> None:
    for n in range(5):
        await webhook.send(message(n))

    assert len(http_sink.requests) == 5
    assert len({request.client for request in http_sink.requests}) == 1


async def test_webhook_waits_for_a_free_connection_without_running_down_its_timeout(
    http_sink: HttpSink,
) -> None:
    # 40 sends of 0.2 s over 2 connections take 4 s: the last two wait 3.8 s or more for
    # a connection, longer than the 3 s timeout of each: only the time on a connection
    # counts, the wait for one does not. A send's own 0.2 s leaves 2.8 s of its timeout
    # for a loaded machine's stalls.
    http_sink.default = Reply(delay=0.2)
    provider = WebhookProvider(http_sink.url, SECRET, timeout=3, max_connections=2)
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(provider.send(message(n)) for n in range(40)))
        took = time.monotonic() - started
    finally:
        await provider.aclose()

    assert [r.provider_message_id for r in results] == [
        f"hook-{message(n).delivery_id}" for n in range(40)
    ]
    assert took >= 4
    assert len({request.client for request in http_sink.requests}) <= 2


async def test_webhook_reads_the_start_of_a_huge_answer_and_the_next_send_still_goes_out(
    webhook: WebhookProvider, http_sink: HttpSink
) -> None:
    http_sink.default = Reply(500, b"E" * 10_000_000)
    with pytest.raises(TransientError) as caught:
        await webhook.send(message(1))
    http_sink.default = Reply()
    result = await webhook.send(message(2))

    assert caught.value.detail == "HTTP 500: " + "E" * 500
    assert result.provider_message_id == f"hook-{message(2).delivery_id}"
    # The connection of the unread answer was dropped, not reused mid-answer.
    assert http_sink.requests[0].client != http_sink.requests[1].client


async def test_webhook_error_answer_that_is_not_utf8_is_kept_with_replacements(
    webhook: WebhookProvider, http_sink: HttpSink
) -> None:
    http_sink.default = Reply(400, b"bad \xff\xfe name")

    with pytest.raises(PermanentError) as caught:
        await webhook.send(message(1))

    assert caught.value.detail == "HTTP 400: bad \ufffd\ufffd name"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_webhook_redirect_is_permanent_and_not_followed(
    webhook: WebhookProvider, http_sink: HttpSink, status: int
) -> None:
    http_sink.default = Reply(status, b"moved", headers={"Location": "/elsewhere"})

    with pytest.raises(PermanentError) as caught:
        await webhook.send(message(1))

    assert caught.value.detail == f"HTTP {status}: moved"
    assert [request.path for request in http_sink.requests] == ["/hooks/messages"]


async def test_closing_the_webhook_provider_closes_its_connections_without_warnings(
    http_sink: HttpSink, caplog: pytest.LogCaptureFixture
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        providers = build_providers(
            settings(
                email_provider="webhook",
                webhook_url=http_sink.url,
                webhook_secret=SECRET,
                webhook_max_connections=4,
            )
        )
        await asyncio.gather(*(providers["email"].send(message(n)) for n in range(12)))
        held = http_sink.open_connections
        await close_providers(providers)
        await until(lambda: http_sink.open_connections == 0)  # PATIENCE: a wait, no bound
        gc.collect()

    assert 1 <= held <= 4
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# --- Webhook: throttling (Retry-After) ------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_webhook_throttling_answer_with_retry_after_seconds_is_throttled(
    webhook: WebhookProvider, http_sink: HttpSink, status: int
) -> None:
    http_sink.default = Reply(status, b"slow down", headers={"Retry-After": "30"})

    with pytest.raises(Throttled) as caught:
        await webhook.send(message(1))

    assert isinstance(caught.value, TransientError)  # delivery treats it as any transient
    assert caught.value.retry_after_seconds == 30.0
    assert caught.value.detail == f"HTTP {status}: slow down"


async def test_webhook_retry_after_as_an_http_date_is_the_seconds_until_then(
    webhook: WebhookProvider, http_sink: HttpSink
) -> None:
    then = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=120)
    http_sink.default = Reply(429, b"", headers={"Retry-After": format_datetime(then, True)})

    before = time.time()
    with pytest.raises(Throttled) as caught:
        await webhook.send(message(1))
    after = time.time()

    # The seconds until `then` as of some instant of the send, however long it took.
    left = caught.value.retry_after_seconds
    assert then.timestamp() - after <= left <= then.timestamp() - before


@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [
        ("86400", 3600.0),  # a day: at most an hour
        (format_datetime(datetime.now(UTC) + timedelta(days=2), True), 3600.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0),  # already past: at least a second
        ("0", 1.0),
    ],
    ids=["a-day", "a-date-in-2-days", "a-past-date", "zero"],
)
async def test_webhook_retry_after_is_bounded(
    webhook: WebhookProvider, http_sink: HttpSink, retry_after: str, seconds: float
) -> None:
    http_sink.default = Reply(503, b"", headers={"Retry-After": retry_after})

    with pytest.raises(Throttled) as caught:
        await webhook.send(message(1))

    assert caught.value.retry_after_seconds == seconds


@pytest.mark.parametrize(
    "headers",
    [{}, {"Retry-After": "soon"}, {"Retry-After": "-5"}, {"Retry-After": "1.5"}],
    ids=["without", "not-a-date", "negative", "fraction"],
)
async def test_webhook_429_without_a_readable_retry_after_is_throttled_for_the_backoff(
    webhook: WebhookProvider, http_sink: HttpSink, headers: dict[str, str]
) -> None:
    http_sink.default = Reply(429, b"busy", headers=headers)

    with pytest.raises(Throttled) as caught:
        await webhook.send(message(1))

    # No wait said: the delivery's own backoff decides it (at least 1 s, jobs/delivery.py).
    assert caught.value.retry_after_seconds is None
    assert caught.value.detail == "HTTP 429: busy"


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (503, {}),
        (503, {"Retry-After": "soon"}),
        (500, {"Retry-After": "30"}),
        (408, {"Retry-After": "30"}),
    ],
    ids=["503-without", "503-not-a-date", "500", "408"],
)
async def test_webhook_other_transient_answers_are_not_throttled(
    webhook: WebhookProvider, http_sink: HttpSink, status: int, headers: dict[str, str]
) -> None:
    http_sink.default = Reply(status, b"busy", headers=headers)

    with pytest.raises(TransientError) as caught:
        await webhook.send(message(1))

    assert not isinstance(caught.value, Throttled)
    assert caught.value.detail == f"HTTP {status}: busy"


# --- Log ----------------------------------------------------------------------------------


async def test_log_provider_logs_one_line_without_the_body_nor_the_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = LogProvider()
    sent = message(1, body="Your HIV test result is ready", subject="Lab results")

    with caplog.at_level(logging.INFO, logger="messaging.deliveries"):
        result = await provider.send(sent)

    [record] = caplog.records
    assert record.name == "messaging.deliveries"
    assert record.levelno == logging.INFO
    line = JsonFormatter().format(record)  # as the worker's handler writes it
    fields = json.loads(line)
    assert fields["message"] == "delivered"
    assert fields["delivery_id"] == sent.delivery_id
    assert fields["run_id"] == "run-1"
    assert fields["channel"] == "email"
    assert fields["recipient"] == "u***@example.com"
    assert "user1@example.com" not in line
    assert "HIV" not in line and "Lab results" not in line
    assert result.provider_message_id == f"log-{sent.delivery_id}"


# --- Configuration ------------------------------------------------------------------------


def settings(**changes: Any) -> Settings:
    return replace(Settings(), **changes)


async def test_default_configuration_logs_both_channels_with_one_provider() -> None:
    providers = build_providers(settings())

    assert isinstance(providers["email"], LogProvider)
    assert providers["email"] is providers["sms"]
    await close_providers(providers)


async def test_both_channels_share_one_webhook_provider() -> None:
    providers = build_providers(
        settings(
            email_provider="webhook",
            sms_provider="webhook",
            webhook_url="https://hooks.example.com/messages",
            webhook_secret=SECRET,
        )
    )

    assert isinstance(providers["email"], WebhookProvider)
    assert providers["email"] is providers["sms"]
    await close_providers(providers)


async def test_email_by_smtp_and_sms_by_webhook() -> None:
    providers = build_providers(
        settings(
            email_provider="smtp",
            smtp_url="smtp://mail.example.com:587",
            sms_provider="webhook",
            webhook_url="https://hooks.example.com/sms",
            webhook_secret=SECRET,
        )
    )

    assert isinstance(providers["email"], SmtpProvider)
    assert isinstance(providers["sms"], WebhookProvider)
    await close_providers(providers)


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"email_provider": "smtp"}, "EMAIL_PROVIDER=smtp needs SMTP_URL"),
        ({"sms_provider": "smtp", "smtp_url": "smtp://mail:25"}, "SMTP delivers e-mail only"),
        ({"sms_provider": "webhook"}, "SMS_PROVIDER=webhook needs WEBHOOK_URL"),
        (
            {"email_provider": "webhook", "webhook_url": "https://hooks.example.com"},
            "EMAIL_PROVIDER=webhook needs WEBHOOK_SECRET",
        ),
        ({"email_provider": "smtp", "smtp_url": "mail.example.com"}, "SMTP_URL must look like"),
        (
            {"sms_provider": "webhook", "webhook_url": "hooks.example.com", "webhook_secret": "k"},
            "WEBHOOK_URL must be an http",
        ),
    ],
)
def test_incomplete_provider_configuration_is_refused(
    changes: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        build_providers(settings(**changes))
