"""/v1/messaging/providers/{provider}/events: what providers report after a send. No bearer
token: each provider signs its requests, and a guard lets in only a body whose signature
matches (else 401), before the body is even decoded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

from litestar import Request, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Body

from app.core.signing import HEADER, signature_matches
from app.domain.errors import Unauthenticated
from app.domain.schemas import ProviderEvents, ProviderEventsResult
from app.http.body import MsgspecJSON
from app.http.openapi import signed
from app.http.routes.campaigns import Conn
from app.services.feedback import (
    MAX_BODY_BYTES,
    BadSignature,
    ReceivedEvents,
    check_sendgrid_timestamp,
    decode_webhook_events,
    sendgrid_feedback,
    verify_sendgrid,
    webhook_feedback,
)

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
T = TypeVar("T")


async def _raw_body(connection: ASGIConnection[Any, Any, Any, Any]) -> bytes:
    # Guards get the request itself on HTTP routes; its body is read once and cached.
    assert isinstance(connection, Request)
    return await connection.body()


OFF_LOOP_BYTES = 64 * 1024
"""A signature over a larger body is checked in a thread. Hashing takes milliseconds per
megabyte (14 ms for 1.8 MB on the 2-core test machine), which the event loop, and every
other request, would otherwise wait for while anyone posts junk; OpenSSL lets go of the
GIL while it hashes."""


async def _check(body: bytes, check: Callable[[], T]) -> T:
    if len(body) <= OFF_LOOP_BYTES:
        return check()
    return await asyncio.to_thread(check)


async def webhook_signature(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    body = await _raw_body(connection)
    secret = connection.app.state.settings.webhook_secret
    header = connection.headers.get(HEADER)
    if not await _check(body, partial(signature_matches, secret, body, header)):
        raise Unauthenticated(f"{HEADER} is missing or does not match the body")


async def sendgrid_signature(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    key = connection.app.state.sendgrid_key
    signature, timestamp = (
        connection.headers.get(SENDGRID_SIGNATURE),
        connection.headers.get(SENDGRID_TIMESTAMP),
    )
    try:
        check_sendgrid_timestamp(timestamp)  # before the body is even read: a replay is cheap
        body = await _raw_body(connection)
        await _check(body, partial(verify_sendgrid, key, body, signature, timestamp))
    except BadSignature as exc:
        raise Unauthenticated(str(exc)) from None


class EventByEvent(MsgspecJSON[ProviderEvents]):
    """The body as the document shows it (ProviderEvents), decoded event by event
    (app/services/feedback.py): an event that is not one is reported, and the others apply."""

    def decode_bytes(self, value: bytes) -> Any:
        return decode_webhook_events(self.asgi_connection.headers.get("content-type"), value)


@post(
    "/v1/messaging/providers/webhook/events",
    status_code=200,
    tags=["providers"],
    dto=EventByEvent,
    return_dto=None,
    request_max_body_size=MAX_BODY_BYTES,
    **signed("WebhookSignature", webhook_signature, 400, 413, 415, 503),
)
async def webhook_events(
    conn: Conn, data: Annotated[ReceivedEvents, Body()]
) -> ProviderEventsResult:
    """Outcomes reported by the webhook provider, 1 to 1,000 events per request, signed
    with `X-Signature: sha256=<hex HMAC-SHA256 of the raw body with WEBHOOK_SECRET>`.
    Each sets its delivery's `outcome`; `bounced` and `complained` suppress the address for
    the run's brand. A replay changes nothing; unknown delivery ids are listed in the
    answer and the other events still apply. So do they when some events are not events
    of this format (a field missing, an `occurred_at` before 1970 or more than a day
    ahead): those are skipped and listed in `invalid_events`."""
    return await webhook_feedback(conn, data)


@post(
    "/v1/messaging/providers/sendgrid/events",
    status_code=200,
    tags=["providers"],
    request_max_body_size=MAX_BODY_BYTES,
    **signed("SendGridSignature", sendgrid_signature, 400, 413, 415, 503),
)
async def sendgrid_events(request: Request[Any, Any, State], conn: Conn) -> ProviderEventsResult:
    """SendGrid's Event Webhook: a JSON array of at most 1,000 SendGrid events, signed
    with ECDSA (SENDGRID_WEBHOOK_PUBLIC_KEY) over a timestamp within 10 minutes of now
    (else 401). Its `delivered`, `bounce` and `spamreport` events set the outcome of the
    delivery named by their `delivery_id` custom argument; the others (processed,
    deferred, open, click, blocked bounces, ...) are ignored; events of another shape are
    skipped and listed in `invalid_events`."""
    body = await request.body()
    return await sendgrid_feedback(conn, request.headers.get("content-type"), body)
