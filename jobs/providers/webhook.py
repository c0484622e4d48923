"""Deliveries as signed JSON POSTs to WEBHOOK_URL, the contract's webhook message."""

from __future__ import annotations

import asyncio
import hmac
import ssl
import time
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
import certifi
import msgspec
from yarl import URL

from jobs.providers.base import (
    OutgoingMessage,
    PermanentError,
    ProviderError,
    SendResult,
    Throttled,
    TransientError,
)

# 408 and 429 ask to come back later; 5xx is the receiver's own trouble.
_TRANSIENT_4XX = {408, 429}
# The answers whose Retry-After says when the receiver takes messages again.
_THROTTLING = {429, 503}
# What is read of an answer: enough for any JSON with an id, and for the start of an error
# page; a receiver answering megabytes costs no more memory than this per send.
MAX_ANSWER_BYTES = 1024 * 1024
# What is kept of an error answer in the delivery's last_error.
MAX_ERROR_CHARS = 500
# A Retry-After further away than this is taken as this: a typo or a hostile receiver must
# not stop deliveries for days.
MAX_RETRY_AFTER_SECONDS = 3600.0
# And one closer than this (0, a date already past) as this: a receiver answering
# `429, Retry-After: 0` must not get the same message again at once, for ever.
MIN_RETRY_AFTER_SECONDS = 1.0


class WebhookProvider:
    name = "webhook"

    def __init__(
        self, url: str, secret: str, *, timeout: float = 10.0, max_connections: int = 8
    ) -> None:
        if urlsplit(url).scheme not in {"http", "https"}:
            raise ValueError(f"WEBHOOK_URL must be an http:// or https:// URL; got {url!r}")
        self._url = URL(url)
        self._key = secret.encode()
        self._timeout = timeout
        # Mozilla's CAs (certifi), as httpx trusted before: not whatever the image ships.
        self._tls = (
            ssl.create_default_context(cafile=certifi.where())
            if self._url.scheme == "https"
            else None
        )
        # A send holds a slot from before it takes a connection until it gave it back, so
        # that the pool never makes a send wait: the wait is here, outside the send's
        # timeout, and a wait that never reached the receiver costs no attempt.
        self._slots = asyncio.Semaphore(max_connections)
        # aiohttp binds a session to the running loop: it is made by the first send.
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def send(self, message: OutgoingMessage) -> SendResult:
        body = msgspec.json.encode(message)
        headers = {
            "Content-Type": "application/json",
            # The same on every attempt, so that the receiver can drop a repeat.
            "Idempotency-Key": message.delivery_id,
            "X-Signature": "sha256=" + hmac.digest(self._key, body, "sha256").hex(),
        }
        async with self._slots:
            session = self._open_session()
            try:
                async with session.post(
                    self._url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    answer = await _read_at_most(response.content, MAX_ANSWER_BYTES)
            except TimeoutError as exc:  # aiohttp's own timeouts are TimeoutErrors too
                raise TransientError(
                    f"Timeout: no complete answer within {self._timeout:g} s"
                ) from exc
            except aiohttp.ClientError as exc:  # refused, reset or lost connections
                raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            return SendResult(provider_message_id=_message_id(answer))
        refusal = _refusal(status, answer, retry_after)
        refusal.status_code = status  # for the send's span (app/core/tracing.py)
        raise refusal

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._closed:
                raise RuntimeError("the webhook provider is closed")
            self._session = aiohttp.ClientSession(
                # No limit of its own: the slots above are the limit, and waiting in the
                # connector would run down the send's timeout.
                connector=aiohttp.TCPConnector(limit=0, ssl=self._tls or True),
                # The whole send on a connection (connect, request, answer): the longest a
                # slot is held.
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"User-Agent": "messaging-webhook/1"},
                # Nothing a receiver sets is sent back with the next message.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The first `limit` bytes of the body; the rest is not read (aiohttp then closes the
    connection rather than reusing it)."""
    answer = bytearray()
    while len(answer) < limit:
        chunk = await content.read(limit - len(answer))
        if not chunk:
            break
        answer += chunk
    return bytes(answer)


def _refusal(status: int, answer: bytes, retry_after: str | None) -> ProviderError:
    detail = f"HTTP {status}: {answer[:MAX_ERROR_CHARS].decode('utf-8', 'replace')}"
    seconds = None if retry_after is None else retry_after_seconds(retry_after)
    if status == 429:
        # Throttled whatever its Retry-After: without a readable one, the delivery's own
        # backoff decides the wait (jobs/delivery.py), at least a second.
        return Throttled(detail, seconds)
    if status in _THROTTLING and seconds is not None:
        return Throttled(detail, seconds)
    if status in _TRANSIENT_4XX or 500 <= status < 600:
        return TransientError(detail)
    # Other 4xx, and redirects, which we do not follow: another attempt would fare the same.
    return PermanentError(detail)


def retry_after_seconds(value: str, now: float | None = None) -> float | None:
    """A Retry-After header as seconds from `now` (time.time() by default), from
    MIN_RETRY_AFTER_SECONDS to MAX_RETRY_AFTER_SECONDS; None when it is neither
    delay-seconds nor an HTTP-date (a negative number, a fraction, text)."""
    value = value.strip()
    if value.isdecimal():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" or asctime's format: HTTP-dates are in GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, MIN_RETRY_AFTER_SECONDS), MAX_RETRY_AFTER_SECONDS)


def _message_id(content: bytes) -> str | None:
    """The `id` of a JSON object response, if it has one."""
    try:
        answer = msgspec.json.decode(content)
    except (msgspec.DecodeError, RecursionError):
        return None
    message_id = answer.get("id") if isinstance(answer, dict) else None
    if isinstance(message_id, str | int) and not isinstance(message_id, bool):
        return str(message_id) or None
    return None
