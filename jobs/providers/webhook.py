"""Deliveries as signed JSON POSTs to WEBHOOK_URL, the contract's webhook message."""

from __future__ import annotations

import hashlib
import hmac
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx
import msgspec

from jobs.providers.base import (
    OutgoingMessage,
    PermanentError,
    SendResult,
    Throttled,
    TransientError,
)

# 408 and 429 ask to come back later; 5xx is the receiver's own trouble.
_TRANSIENT_4XX = {408, 429}
# What is read of an answer: enough for any JSON with an id, and for the start of an error
# page; a receiver answering megabytes costs no more memory than this per send.
MAX_ANSWER_BYTES = 1024 * 1024


class WebhookProvider:
    name = "webhook"

    def __init__(
        self, url: str, secret: str, *, timeout: float = 10.0, max_connections: int = 8
    ) -> None:
        if urlsplit(url).scheme not in {"http", "https"}:
            raise ValueError(f"WEBHOOK_URL must be an http:// or https:// URL; got {url!r}")
        self._url = url
        self._key = secret.encode()
        # One client for the process: its pool keeps connections open between sends.
        self._client = httpx.AsyncClient(
            # No pool timeout: sends wait for a free connection behind WORKER_CONCURRENCY,
            # and a wait that never reached the receiver must not cost an attempt.
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0), pool=None),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"User-Agent": "messaging-webhook/1"},
        )

    async def send(self, message: OutgoingMessage) -> SendResult:
        body = msgspec.json.encode(message)
        signature = hmac.new(self._key, body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            # The same on every attempt, so that the receiver can drop a repeat.
            "Idempotency-Key": message.delivery_id,
            "X-Signature": f"sha256={signature}",
        }
        try:
            async with self._client.stream(
                "POST", self._url, content=body, headers=headers
            ) as response:
                answer = await _read_at_most(response, MAX_ANSWER_BYTES)
        except httpx.HTTPError as exc:  # timeouts, refused or lost connections
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return SendResult(provider_message_id=_message_id(answer))
        text = answer[:500].decode("utf-8", "replace")
        detail = f"HTTP {response.status_code}: {text}"
        wait = retry_after_seconds(response.headers.get("retry-after"))
        if response.status_code in (429, 503) and wait is not None:
            raise Throttled(detail, wait)
        if response.status_code in _TRANSIENT_4XX or response.is_server_error:
            raise TransientError(detail)
        # Other 4xx, and redirects, which we do not follow: another attempt would fare the same.
        raise PermanentError(detail)

    async def aclose(self) -> None:
        await self._client.aclose()


MAX_RETRY_AFTER_SECONDS = 3600.0


def retry_after_seconds(header: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now, at most an
    hour; None when absent or unreadable."""
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(header) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The first `limit` bytes of the body; the rest is not read (the connection is then
    closed rather than reused)."""
    answer = bytearray()
    async for chunk in response.aiter_bytes():
        answer += chunk
        if len(answer) >= limit:
            break
    return bytes(answer[:limit])


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
