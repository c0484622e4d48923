"""What every delivery provider takes, returns and raises."""

from __future__ import annotations

from typing import Protocol

import msgspec

# last_error is shown to API users; a provider may answer with a whole HTML page.
MAX_DETAIL = 1000


class OutgoingMessage(msgspec.Struct, frozen=True):
    """One delivery, ready to send.

    Its fields, in this order, are the webhook message of the API contract: the webhook
    provider sends this Struct as it is, so a new field here is a change of that contract.
    """

    delivery_id: str
    run_id: str
    campaign_id: str
    brand_id: str
    channel: str  # "email" | "sms"
    person_id: str
    recipient: str
    sender: str | None
    subject: str | None
    body: str
    html_body: str | None = None
    """The HTML part of an e-mail (its text part is `body`); None: text only."""
    headers: dict[str, str] = {}
    """Mail headers of the message (List-Unsubscribe and List-Unsubscribe-Post for a
    campaign with a topic); an SMTP provider writes them into the e-mail."""
    unsubscribe_url: str | None = None
    """The recipient's one-click unsubscribe link, for a campaign with a topic."""


class SendResult(msgspec.Struct):
    provider_message_id: str | None


class ProviderError(Exception):
    """The provider did not accept the message; `detail` is its answer, kept as last_error.
    `status_code` is its reply code (SMTP 550, HTTP 422) when it gave one: the send's span
    shows that code, never the words of `detail`, which may quote the address."""

    status_code: int | None = None

    def __init__(self, detail: str, *, status_code: int | None = None) -> None:
        self.detail = detail[:MAX_DETAIL]
        self.status_code = status_code
        super().__init__(self.detail)


class TransientError(ProviderError):
    """Worth another attempt later: a timeout, a lost connection, a busy or failing server."""


class Throttled(TransientError):
    """The provider asked us to slow down (429, or 503 with Retry-After): the delivery
    waits `retry_after_seconds` (None: the provider did not say; the delivery's backoff
    decides) without spending an attempt, up to DELIVERY_MAX_THROTTLES times."""

    def __init__(self, detail: str, retry_after_seconds: float | None) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


class PermanentError(ProviderError):
    """Will fail the same way every time: the delivery fails at once."""


class OptedOut(PermanentError):
    """The recipient opted out of this sender at the provider (Twilio's error 21610: they
    texted STOP): the delivery fails, and the address is suppressed for the brand in the
    record's transaction (jobs/recording.py)."""


class Provider(Protocol):
    name: str

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Hand the message over; raise TransientError or PermanentError if it was refused."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once when the worker stops."""
        ...
