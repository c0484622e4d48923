"""The threaded HTTP server every HTTP fake runs on, and the free port it starts on."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from tests.waiting import GONE, returned

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on (a server started right after will get it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Handler(BaseHTTPRequestHandler):
    """The base of a fake's request handler: HTTP/1.1 with keep-alive, as real receivers
    answer (a fake may set HTTP/1.0), and quiet."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


class _Server(ThreadingHTTPServer):
    # stop() waits for every handler itself, with a bound (server_close()'s join has none);
    # one that outlives it cannot keep the test process from exiting.
    daemon_threads = True
    allow_reuse_address = True  # a fake started again on its port right after a stop

    def __init__(self, port: int, handler: type[Handler]) -> None:
        self.connections: set[socket.socket] = set()
        super().__init__((HOST, port), handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a slow answer; the test sees it on the client side


class ThreadedServer:
    """A threaded HTTP server on 127.0.0.1 (`port`, or a free one), served in a thread of
    its own from `start()` (or `with`) to `stop()`. `stopping` is set from the moment
    `stop()` is called: handlers that play a slow peer wait on it instead of sleeping."""

    def __init__(self, handler: type[Handler], port: int = 0) -> None:
        self.stopping = threading.Event()
        self._server = _Server(port, handler)
        self.port = int(self._server.server_address[1])
        # A short poll makes stop() quick: shutdown() waits for the serving loop to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def open_connections(self) -> int:
        """Connections that clients hold open to the server right now."""
        return len(self._server.connections)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving, and waits for every handler to end: GONE seconds at most."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self._thread.is_alive():  # shutdown() waits for the serving loop: for ever if none
            # ... and for ever if the loop is stuck (a TLS handshake in accept() waits).
            returned(self._server.shutdown, f"the shutdown of the fake on port {self.port}")
        self._server.server_close()
        # Kept-alive connections would hold their handler threads until the client leaves;
        # a connection accepted just before the shutdown registers a moment later.
        deadline = time.monotonic() + GONE
        while self._server.connections:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(self._server.connections)} handlers of the fake on port {self.port}"
                    f" still run {GONE:g} s after its stop"
                )
            for sock in list(self._server.connections):
                with contextlib.suppress(OSError):  # already closed by the client
                    sock.shutdown(socket.SHUT_RDWR)
            time.sleep(0.01)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
