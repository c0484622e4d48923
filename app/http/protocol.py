"""The web process's HTTP/1.1 implementation: uvicorn's h11 protocol with bounded headers.

The Procfile runs uvicorn with `--http app.http.protocol:H11Protocol`. h11 keeps at most
HTTP_MAX_HEADER_BYTES of an incomplete request line and headers in its buffer and refuses
the request once that is exceeded, so a header bomb costs that much memory (plus one read)
and one parse, and other connections do not notice it (httptools, uvicorn's default, reads
any header size and builds its value by repeated appending: docs/performance.md). A head
over the limit that arrived complete in one read is refused as well. The refusal, 431,
gets the service's `Error` body, like every other non-2xx answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import msgspec
from uvicorn.config import Config
from uvicorn.protocols.http import h11_impl
from uvicorn.server import ServerState

from app.core.settings import get_settings
from app.domain.schemas import Error


class BoundedConnection(h11.Connection):
    """h11's server connection; `refusal_status` says why it last refused a request."""

    def __init__(self, max_head_bytes: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.max_head_bytes = max_head_bytes
        self.refusal_status = 400

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refusal_status = exc.error_status_hint  # 431: the head outgrew the buffer
            raise
        if isinstance(event, h11.Request) and _head_bytes(event) > self.max_head_bytes:
            self.refusal_status = 431
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        return event


def _head_bytes(request: h11.Request) -> int:
    return (
        len(request.method)
        + len(request.target)
        + sum(len(name) + len(value) + 4 for name, value in request.headers)
    )


class H11Protocol(h11_impl.H11Protocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn: BoundedConnection = BoundedConnection(get_settings().http_max_header_bytes)

    def send_400_response(self, msg: str) -> None:
        """h11 refused what the client sent: a head over the limit (431), or not HTTP."""
        if self.conn.refusal_status == 431:
            limit = self.conn.max_head_bytes
            status, error = (
                431,
                Error(
                    error="request_header_fields_too_large",
                    message=f"the request line and headers exceed {limit} bytes",
                ),
            )
        else:
            status, error = 400, Error(error="bad_request", message="not a valid HTTP request")
        body = msgspec.json.encode(error)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=status, headers=headers),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()
