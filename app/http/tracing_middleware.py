"""The SERVER span of each HTTP request (installed only when tracing is on)."""

from __future__ import annotations

from typing import cast

from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from app.core import tracing
from app.http.request_id import request_id_of


def tracing_middleware(app: ASGIApp) -> ASGIApp:
    """One SERVER span per HTTP request, named by route template, continuing the caller's
    trace (W3C `traceparent` by default, OTEL_PROPAGATORS otherwise)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        http = cast("HTTPScope", scope)
        # The route template wherever a path would go: the path itself may hold an
        # address (.../suppressions/{recipient}), and spans leave the service.
        method, route = http["method"], scope.get("path_template") or "unmatched"
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in http["headers"]}
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracing.span(
            f"{method} {route}",
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "http.route": route,
                "url.path": route,
                "request_id": request_id_of(scope),
            },
            parent=propagate.extract(headers),
            record_errors=False,
        ) as request_span:
            try:
                await app(scope, receive, send_with_status)
            except HTTPException as exc:  # answered by the app's exception handlers, outside
                status = exc.status_code
                raise
            except Exception as exc:
                if request_span.is_recording():
                    tracing.record_exception(request_span, exc)
                raise
            finally:
                request_span.set_attribute("http.response.status_code", status)
                if status >= 500:  # 4xx are the caller's, not this server's, errors
                    request_span.set_status(Status(StatusCode.ERROR))

    return middleware
