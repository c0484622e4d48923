"""Deliveries as signed JSON POSTs to WEBHOOK_URL, the contract's webhook message."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

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
from jobs.providers.http import MAX_ANSWER_BYTES, PooledHttp, retry_after_seconds

__all__ = ["MAX_ANSWER_BYTES", "WebhookProvider", "retry_after_seconds"]

# 408 and 429 ask to come back later; 5xx is the receiver's own trouble.
_TRANSIENT_4XX = {408, 429}
# The answers whose Retry-After says when the receiver takes messages again.
_THROTTLING = {429, 503}
# What is kept of an error answer in the delivery's last_error.
MAX_ERROR_CHARS = 500


class WebhookProvider:
    name = "webhook"

    def __init__(
        self, url: str, secret: str, *, timeout: float = 10.0, max_connections: int = 8
    ) -> None:
        if urlsplit(url).scheme not in {"http", "https"}:
            raise ValueError(f"WEBHOOK_URL must be an http:// or https:// URL; got {url!r}")
        self._url = URL(url)
        self._key = secret.encode()
        self._http = PooledHttp(
            self.name, self._url, timeout=timeout, max_connections=max_connections
        )

    async def send(self, message: OutgoingMessage) -> SendResult:
        body = msgspec.json.encode(message)
        headers = {
            "Content-Type": "application/json",
            # The same on every attempt, so that the receiver can drop a repeat.
            "Idempotency-Key": message.delivery_id,
            "X-Signature": "sha256=" + hmac.digest(self._key, body, "sha256").hex(),
        }
        answer = await self._http.post(self._url, body, headers)
        if 200 <= answer.status < 300:
            return SendResult(provider_message_id=_message_id(answer.body))
        refusal = _refusal(answer.status, answer.body, answer.retry_after)
        refusal.status_code = answer.status  # for the send's span (app/core/tracing.py)
        raise refusal

    async def aclose(self) -> None:
        await self._http.aclose()


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
