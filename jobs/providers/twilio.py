"""SMS through Twilio's Messages API (or one that copies its shapes): one form POST with
basic auth per message, on the pooled client the webhook provider uses."""

from __future__ import annotations

import base64
from urllib.parse import urlencode, urlsplit

import msgspec
from yarl import URL

from app.domain.twilio import STATUS_PATH
from jobs.providers.base import (
    OptedOut,
    OutgoingMessage,
    PermanentError,
    ProviderError,
    SendResult,
    Throttled,
    TransientError,
)
from jobs.providers.http import PooledHttp, retry_after_seconds

THROTTLED = 20429
"""Twilio's "Too Many Requests", sometimes with another HTTP status than 429."""
OPTED_OUT = 21610
"""Twilio's "Attempt to send to unsubscribed recipient": the recipient texted STOP."""
MAX_ERROR_CHARS = 500
"""What is kept of an answer that is not Twilio's error JSON."""


class TwilioError(msgspec.Struct):
    """Twilio's error body; the fields it may lack default to None."""

    code: int | None = None
    message: str | None = None


class TwilioMessage(msgspec.Struct):
    sid: str | None = None


class TwilioProvider:
    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        public_base: str,
        api_url: str = "https://api.twilio.com",
        messaging_service_sid: str | None = None,
        timeout: float = 10.0,
        max_connections: int = 8,
    ) -> None:
        if urlsplit(api_url).scheme not in {"http", "https"}:
            raise ValueError(f"TWILIO_API_URL must be an http:// or https:// URL; got {api_url!r}")
        origin = URL(api_url.rstrip("/"))
        self._url = origin / "2010-04-01" / "Accounts" / account_sid / "Messages.json"
        credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._authorization = f"Basic {credentials}"
        self._status_callback = public_base + STATUS_PATH
        self._messaging_service_sid = messaging_service_sid
        self._http = PooledHttp(self.name, origin, timeout=timeout, max_connections=max_connections)

    async def send(self, message: OutgoingMessage) -> SendResult:
        form = {"To": message.recipient, "Body": message.body}
        if self._messaging_service_sid:
            form["MessagingServiceSid"] = self._messaging_service_sid
        elif message.sender:
            form["From"] = message.sender
        else:
            raise PermanentError(
                "the campaign has no sender, and no TWILIO_MESSAGING_SERVICE_SID is set"
            )
        form["StatusCallback"] = self._status_callback
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": self._authorization,
            # Twilio's Messages API keeps no idempotency key; a proxy or a compatible API
            # may (the same on every attempt of the delivery).
            "Idempotency-Key": message.delivery_id,
        }
        answer = await self._http.post(self._url, urlencode(form).encode(), headers)
        if 200 <= answer.status < 300:
            return SendResult(provider_message_id=_sid(answer.body))
        refusal = _refusal(answer.status, answer.body, answer.retry_after)
        refusal.status_code = answer.status  # for the send's span: never Twilio's words
        raise refusal

    async def aclose(self) -> None:
        await self._http.aclose()


def _sid(body: bytes) -> str | None:
    try:
        return msgspec.json.decode(body, type=TwilioMessage).sid or None
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None


def _refusal(status: int, body: bytes, retry_after: str | None) -> ProviderError:
    """A non-2xx answer as the delivery takes it. `detail` (last_error) keeps Twilio's code
    and message, which may quote the number: last_error is shown only to whoever may see
    the delivery, never logged."""
    try:
        error = msgspec.json.decode(body, type=TwilioError)
    except (msgspec.DecodeError, RecursionError):
        error = TwilioError()
    if error.code is not None:
        words = f": {error.message}" if error.message else ""
        detail = f"HTTP {status}: Twilio error {error.code}{words}"
    else:
        detail = f"HTTP {status}: {body[:MAX_ERROR_CHARS].decode('utf-8', 'replace')}"
    seconds = None if retry_after is None else retry_after_seconds(retry_after)
    if status == 429 or error.code == THROTTLED or (status == 503 and seconds is not None):
        return Throttled(detail, seconds)
    if status == 408 or 500 <= status < 600:
        return TransientError(detail)
    if error.code == OPTED_OUT:
        return OptedOut(detail)
    # Other 4xx (21211 invalid number, 21614 not SMS-capable, 21635 landline, ...), and
    # redirects, which are not followed: another attempt would fare the same.
    return PermanentError(detail)
