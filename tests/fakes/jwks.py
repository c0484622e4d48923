"""An identity provider's JWKS endpoint."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.server import HOST, Handler, ThreadedServer


class JwksServer(ThreadedServer):
    """An identity provider's JWKS endpoint: serves `{"keys": keys}` (change `keys` to
    rotate), counts the requests that reached it, and answers after `delay` seconds (a slow
    provider); `stop()` takes it down."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.delay = 0.0
        self.requests = 0
        super().__init__(_handler_for(self))
        self.url = f"http://{HOST}:{self.port}/.well-known/jwks.json"


def _handler_for(server: JwksServer) -> type[Handler]:
    class JwksHandler(Handler):
        protocol_version = "HTTP/1.0"  # a connection a request, as this provider answers

        def do_GET(self) -> None:
            server.requests += 1
            if server.delay and server.stopping.wait(server.delay):
                return
            body = json.dumps({"keys": server.keys}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return JwksHandler
