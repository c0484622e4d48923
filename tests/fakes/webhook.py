"""A webhook receiver: records every request and answers as the test scripts (the webhook
provider's receiver, or the platform's events receiver)."""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.server import HOST, Handler, ThreadedServer
from tests.fakes.tls import Tls


@dataclass
class Reply:
    """What the HTTP sink answers: `body` None means {"id": "hook-<delivery_id>"}."""

    status: int = 200
    body: bytes | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class Rendezvous:
    """Holds every request that reaches the sink until requests of `parties` different
    jobs have arrived (the job of a request: `job_of` its JSON body), `seconds` at most.
    With one job per worker (WORKER_JOBS=1), a worker whose send is held cannot take
    another job: requests of two jobs in flight at once come from two workers, so both
    take part in the run by construction, not by luck."""

    def __init__(self, job_of: Callable[[Any], object], parties: int = 2, seconds: float = 30):
        self.job_of, self.parties, self.seconds = job_of, parties, seconds
        self.met = threading.Event()
        self.met_at = 0.0
        """When (time.time()) the parties met: the held requests go on from then."""
        self._go = threading.Event()  # the parties met, or the sink stops
        self._jobs: set[object] = set()
        self._lock = threading.Lock()

    def arrive(self, body: bytes) -> None:
        with self._lock:
            self._jobs.add(self.job_of(json.loads(body)))
            if len(self._jobs) >= self.parties and not self.met.is_set():
                self.met_at = time.time()
                self.met.set()
                self._go.set()
        self._go.wait(self.seconds)

    def release(self) -> None:
        """Lets the held requests go on, whether or not the parties met (the sink stops)."""
        self._go.set()


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes
    client: tuple[str, int]
    """The client's end of the connection: the same for requests sent on one connection."""
    status: int = 0
    """The status the sink answered (or was about to, if the client went away first)."""
    received_at: float = field(default_factory=time.time)
    """When its body had arrived (time.time())."""

    def json(self) -> Any:
        return json.loads(self.body)


class HttpSink(ThreadedServer):
    """A threaded HTTP/1.1 server (keep-alive) that records every request and answers with
    `replies[recipient]` (the "recipient" of a JSON body), else `default`. `script` answers
    the next requests first, one reply each, in order."""

    def __init__(self, port: int = 0, *, tls: Tls | None = None) -> None:
        """On `port`, or on a free one; a sink stopped and started again on the same port
        stands for a receiver that refused connections meanwhile. With `tls`, HTTPS."""
        self.requests: list[ReceivedRequest] = []
        self.replies: dict[str, Reply] = {}
        self.default = Reply()
        self.script: collections.deque[Reply] = collections.deque()
        self.rendezvous: Rendezvous | None = None
        self.gate = threading.Event()
        """While cleared, every request is recorded and then held, unanswered (30 s at
        most): a test freezes what the workers hold, e.g. before it kills one."""
        self.gate.set()
        super().__init__(_handler_for(self), port)
        if tls is not None:
            self._server.socket = tls.server.wrap_socket(self._server.socket, server_side=True)
        scheme = "http" if tls is None else "https"
        self.url = f"{scheme}://{HOST}:{self.port}/hooks/messages"

    def stop(self) -> None:
        # The held requests go on, to find `stopping` set.
        self.gate.set()
        if self.rendezvous is not None:
            self.rendezvous.release()
        super().stop()

    def reply_for(self, body: bytes) -> Reply:
        with contextlib.suppress(IndexError):
            return self.script.popleft()
        try:
            recipient = json.loads(body).get("recipient")
        except (ValueError, AttributeError):
            recipient = None
        return self.replies.get(recipient, self.default)


def _handler_for(sink: HttpSink) -> type[Handler]:
    class SinkHandler(Handler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            if len(body) < length:
                return  # the client died mid-request (a killed worker): nothing arrived
            reply = sink.reply_for(body)
            sink.requests.append(
                ReceivedRequest(
                    method=self.command,
                    path=self.path,
                    headers={name.lower(): value for name, value in self.headers.items()},
                    body=body,
                    client=self.client_address,
                    status=reply.status,
                )
            )
            if sink.rendezvous is not None:
                sink.rendezvous.arrive(body)
            sink.gate.wait(30)
            if reply.delay and sink.stopping.wait(reply.delay):
                return
            answer = reply.body
            if answer is None:
                delivery_id = json.loads(body).get("delivery_id")
                answer = json.dumps({"id": f"hook-{delivery_id}"}).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer)

    return SinkHandler
