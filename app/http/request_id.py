"""Every request gets an id (the caller's X-Request-ID if it sent a sane one); every
response carries it, and every log line of the request has it as `request_id`."""

from __future__ import annotations

import re
import uuid

from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logs import bind_log_context

HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The request's id, chosen on first use and kept in the scope's state."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        state["request_id"] = given if _SANE.fullmatch(given) else uuid.uuid4().hex
    request_id: str = state["request_id"]
    return request_id


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Binds the id to the log lines of a routed request."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        with bind_log_context(request_id=request_id_of(scope)):
            await app(scope, receive, send)

    return middleware


async def send_request_id(message: Message, scope: Scope) -> None:
    """A before-send hook: it sees every response, those of unknown routes included,
    which route middleware never does."""
    if message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message)[HEADER] = request_id_of(scope)
