"""Real servers for tests, each on 127.0.0.1 in its own thread: an SMTP server (aiosmtpd) and
an HTTP server that stand in for a mail relay and a webhook receiver, an identity provider's
JWKS endpoint and an OpenTelemetry collector's OTLP/HTTP receiver. They record what reaches
them and answer as the test scripts."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import gzip
import ipaddress
import json
import os
import re
import shlex
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.tokens import TEST_SECRET
from tests.waiting import PATIENCE

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port nothing listens on (a server started right after will get it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def web_command(
    port: int, *, http: str | None = None, env: dict[str, str] | None = None
) -> list[str]:
    """The Procfile's web line as an argv (the running Python's uvicorn, on 127.0.0.1:`port`),
    `${VAR:-default}` expanded from `env`. `http` swaps the HTTP implementation (uvicorn's
    `--http`), for comparisons."""
    env = {**os.environ, **(env or {}), "PORT": str(port)}
    line = next(
        line.split(":", 1)[1]
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line.startswith("web:")
    )
    line = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1]) or m[2], line)
    argv = shlex.split(line)
    assert argv[0] == "uvicorn", argv
    argv = [sys.executable, "-m", *argv]
    argv[argv.index("--host") + 1] = HOST
    if http is not None:
        argv[argv.index("--http") + 1] = http
    return argv


@dataclass
class WebProcess:
    """A web process started as the Procfile starts it; `log()` is what it wrote to stderr."""

    url: str
    process: Any  # asyncio.subprocess.Process
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")


@contextlib.asynccontextmanager
async def web_process(database_url: str, **env: str) -> AsyncIterator[WebProcess]:
    """The Procfile's web line on a free port, ready (`/readyz` 200) when entered."""
    port = free_port()
    env = {"DATABASE_URL": database_url, "JWT_SECRET": TEST_SECRET, **env}
    with tempfile.TemporaryDirectory() as directory:
        log_file = Path(directory, "web.log")
        with log_file.open("wb") as log:  # noqa: ASYNC230 - once, before the process starts
            process = await asyncio.create_subprocess_exec(
                *web_command(port, env=env), cwd=ROOT, env={**os.environ, **env}, stderr=log
            )
        web = WebProcess(f"http://{HOST}:{port}", process, log_file)
        try:
            async with httpx.AsyncClient(base_url=web.url) as http, asyncio.timeout(PATIENCE):
                while True:
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
            yield web
        finally:
            if process.returncode is None:
                process.terminate()
                await process.wait()


@dataclass(frozen=True)
class Tls:
    """A self-signed certificate for 127.0.0.1: the server's context and a client one that
    trusts it, in place of the system's CAs."""

    server: ssl.SSLContext
    client: ssl.SSLContext

    @classmethod
    def create(cls) -> Tls:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as directory:  # load_cert_chain reads files only
            cert_file, key_file = Path(directory, "cert.pem"), Path(directory, "key.pem")
            cert_file.write_bytes(cert_pem)
            key_file.write_bytes(key_pem)
            server.load_cert_chain(cert_file, key_file)
        client = ssl.create_default_context(cadata=cert_pem.decode())
        return cls(server=server, client=client)


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    peer: tuple[str, int]
    """The client's end of the connection: the same for mails sent on one connection."""
    tls: bool
    login: str | None
    """The user that authenticated on the connection, if any."""


class SmtpSink:
    """An aiosmtpd server that accepts everything, except the recipients in `replies`, whose
    RCPT gets the scripted answer (e.g. "550 5.1.1 No such user")."""

    def __init__(
        self,
        *,
        starttls: Tls | None = None,
        implicit_tls: Tls | None = None,
        logins: dict[str, str] | None = None,
        idle_timeout: float = 300,
    ) -> None:
        self.messages: list[ReceivedMail] = []
        self.replies: dict[str, str] = {}
        self.port = free_port()
        self._logins = logins
        kwargs: dict[str, Any] = {"timeout": idle_timeout}
        if starttls is not None:
            kwargs["tls_context"] = starttls.server
        if logins is not None:
            # AUTH is offered after STARTTLS only (aiosmtpd's default), as real relays do.
            kwargs["authenticator"] = self._authenticate
        self._controller = Controller(
            self,
            hostname=HOST,
            port=self.port,
            ssl_context=implicit_tls.server if implicit_tls else None,
            **kwargs,
        )

    def url(self, scheme: str = "smtp", userinfo: str = "") -> str:
        return f"{scheme}://{userinfo + '@' if userinfo else ''}{HOST}:{self.port}"

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def to(self, recipient: str) -> list[ReceivedMail]:
        return [mail for mail in self.messages if recipient in mail.rcpt_tos]

    # aiosmtpd handler hooks; they run in the server's thread.
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.replies:
            return self.replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # As a mailbox would store it: with the wire's CRLF line ends made local.
        content = (envelope.original_content or b"").replace(b"\r\n", b"\n")
        transport = server.transport
        self.messages.append(
            ReceivedMail(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                message=message_from_bytes(content, policy=policy.default),
                peer=cast(tuple[str, int], session.peer),  # annotated str, but an address pair
                tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
                login=_login_of(session),
            )
        )
        return "250 Message accepted for delivery"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        logins = self._logins or {}
        ok = (
            isinstance(data, LoginPassword)
            and logins.get(data.login.decode()) == data.password.decode()
        )
        # handled=False: aiosmtpd itself answers 535 to a wrong password.
        return AuthResult(success=ok, handled=False, auth_data=data)


def _login_of(session: Session) -> str | None:
    data = session.auth_data
    return data.login.decode() if isinstance(data, LoginPassword) else None


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
        self._jobs: set[object] = set()
        self._lock = threading.Lock()

    def arrive(self, body: bytes) -> None:
        with self._lock:
            self._jobs.add(self.job_of(json.loads(body)))
            if len(self._jobs) >= self.parties:
                self.met.set()
        self.met.wait(self.seconds)


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


class HttpSink:
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
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server = _HttpServer((HOST, port), _handler_for(self))
        if tls is not None:
            self._server.socket = tls.server.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        scheme = "http" if tls is None else "https"
        self.url = f"{scheme}://{HOST}:{self.port}/hooks/messages"
        # A short poll makes stop() quick: shutdown() waits for the serving loop to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> HttpSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes the handlers that sleep to simulate a slow receiver
        self.gate.set()
        self._server.shutdown()
        # Kept-alive connections would hold their handler threads until the client leaves.
        for sock in list(self._connections):
            with contextlib.suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()  # joins the handler threads
        self._thread.join()

    @property
    def open_connections(self) -> int:
        """Connections that clients hold open to the sink right now."""
        return len(self._connections)

    def __enter__(self) -> HttpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reply_for(self, body: bytes) -> Reply:
        with contextlib.suppress(IndexError):
            return self.script.popleft()
        try:
            recipient = json.loads(body).get("recipient")
        except (ValueError, AttributeError):
            recipient = None
        return self.replies.get(recipient, self.default)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() waits for every handler
    allow_reuse_address = True  # a sink started again on its port right after a stop

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a slow answer; the test sees it on the client side


def _handler_for(sink: HttpSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes

        def setup(self) -> None:
            super().setup()
            sink._connections.add(self.connection)

        def finish(self) -> None:
            sink._connections.discard(self.connection)
            super().finish()

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
            if reply.delay and sink._stopping.wait(reply.delay):
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

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

    return Handler


class JwksServer:
    """An identity provider's JWKS endpoint: serves `{"keys": keys}` (change `keys` to
    rotate), counts the requests that reached it, and answers after `delay` seconds (a slow
    provider); `stop()` takes it down."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.delay = 0.0
        self.requests = 0
        self._stopping = threading.Event()
        self._server = _HttpServer((HOST, 0), _jwks_handler_for(self))
        self.url = f"http://{HOST}:{self._server.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> JwksServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()  # wakes the handlers that play a slow provider
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> JwksServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _jwks_handler_for(server: JwksServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.requests += 1
            if server.delay and server._stopping.wait(server.delay):
                return
            body = json.dumps({"keys": server.keys}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass
class ReceivedSpan:
    """One span as an OTLP receiver decodes it; ids in lower-case hex."""

    service: str
    name: str
    kind: str
    """SERVER, CLIENT, PRODUCER, CONSUMER or INTERNAL."""
    trace_id: str
    span_id: str
    parent_span_id: str
    """"" for a root span."""
    attributes: dict[str, Any]
    error: bool


class OtlpReceiver:
    """An OpenTelemetry collector's OTLP/HTTP traces endpoint (`POST /v1/traces`, protobuf):
    decodes every ExportTraceServiceRequest into `spans`."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.bodies: list[bytes] = []
        """Every export request as it arrived (decompressed): all that left for the collector."""
        self.exports = 0
        self._connections: set[socket.socket] = set()
        self._server = _HttpServer((HOST, 0), _otlp_handler_for(self))
        self.endpoint = f"http://{HOST}:{self._server.server_address[1]}"
        """The value of OTEL_EXPORTER_OTLP_ENDPOINT (the exporter appends /v1/traces)."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        for sock in list(self._connections):  # kept alive by an exporter still running
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in list(self.spans) if span.name == name]

    def receive(self, body: bytes) -> None:
        self.bodies.append(body)
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            error=span.status.code == Status.STATUS_CODE_ERROR,
                        )
                    )
        self.exports += 1


def _attributes(pairs: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        values[pair.key] = getattr(pair.value, kind) if kind else None
    return values


def _otlp_handler_for(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # As a collector does: an exporter keeps one connection for all its exports.
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            receiver._connections.add(self.connection)

        def finish(self) -> None:
            receiver._connections.discard(self.connection)
            super().finish()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            receiver.receive(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")  # an empty ExportTraceServiceResponse
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
