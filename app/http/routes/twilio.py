"""/v1/messaging/providers/twilio/{status,inbound}: what Twilio posts after a send (delivery
receipts) and when a recipient texts back (STOP, START). No bearer token: a guard lets in
only a form whose X-Twilio-Signature matches (else 403, as Twilio's own examples answer),
before anything else is done; both answer an empty TwiML document."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler

from app.core.signing import TWILIO_HEADER
from app.domain.twilio import INBOUND_PATH, STATUS_PATH
from app.http.openapi import signed
from app.http.routes.campaigns import Conn
from app.services.twilio import (
    EMPTY_TWIML,
    MAX_FORM_BYTES,
    apply_inbound,
    apply_status,
    verified_form,
)

TWIML = "text/xml"


async def twilio_signature(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    assert isinstance(connection, Request)  # guards get the request itself on HTTP routes
    settings = connection.app.state.settings
    scope = connection.scope
    # The path as it came (percent-escapes kept); a raw_path with the query (some ASGI
    # servers' and test clients') loses it: the query is the query_string's.
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1").split("?")[0]
    # The form, verified, for the handler (the body is read once and cached).
    connection.state.twilio_form = verified_form(
        settings.twilio_auth_token,
        settings.public_base,
        path,
        scope.get("query_string", b"").decode("latin-1"),
        await connection.body(),
        connection.headers.get(TWILIO_HEADER),
    )


_SIGNED = signed("TwilioSignature", twilio_signature, 413, 503, refused=403)


@post(
    STATUS_PATH,
    status_code=200,
    tags=["providers"],
    media_type=TWIML,
    request_max_body_size=MAX_FORM_BYTES,
    **_SIGNED,
)
async def twilio_status(request: Request[Any, Any, State], state: State) -> Response[bytes]:
    """Twilio's status callback of a message this service sent (its `StatusCallback`),
    form-encoded and signed with `X-Twilio-Signature`. `MessageStatus` `delivered`,
    `undelivered` and `failed` set the outcome of the delivery whose
    `provider_message_id` is the `MessageSid` (`failed` and `undelivered` are the outcome
    `undelivered`); a repeat changes nothing, and other statuses and unknown sids are
    ignored. Answers an empty TwiML `<Response/>`."""
    settings = state.settings
    await apply_status(state.pool, request.state.twilio_form, settings.db_pool_timeout_seconds)
    return Response(EMPTY_TWIML, media_type=TWIML)


@post(
    INBOUND_PATH,
    status_code=200,
    tags=["providers"],
    media_type=TWIML,
    request_max_body_size=MAX_FORM_BYTES,
    **_SIGNED,
)
async def twilio_inbound(
    request: Request[Any, Any, State], state: State, conn: Conn
) -> Response[bytes]:
    """A text a recipient sent to one of the numbers (or the Messaging Service) this
    service texts from, form-encoded and signed with `X-Twilio-Signature`. A body that is
    exactly STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE or OPTOUT (any case,
    blanks around it ignored), or `OptOutType=STOP`, suppresses `From` (reason
    `unsubscribed`) for every brand whose SMS campaigns send from `To`; START, UNSTOP,
    YES or `OptOutType=START` lifts those opt-outs (never a bounced, complained or manual
    suppression). Any other text changes nothing. Answers an empty TwiML `<Response/>`:
    Twilio sends the one confirmation."""
    form = request.state.twilio_form
    await apply_inbound(conn, form, state.settings.twilio_messaging_service_sid)
    return Response(EMPTY_TWIML, media_type=TWIML)
