"""A local stand-in for Twilio, and Twilio's signed requests.

`TwilioStandIn` is a real HTTP server on 127.0.0.1 that answers the Messages API as Twilio
does: it checks the basic auth and the form (To, Body, StatusCallback, and From or
MessagingServiceSid), answers 201 with a `sid`, or the scripted error with Twilio's error
body (`code`, `message`), and then posts signed status callbacks to each message's
StatusCallback, as Twilio does, when the test says so. `signed_form` signs a form the way
Twilio signs its requests to us."""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from app.core.signing import twilio_signature
from tests.fakes.server import HOST, Handler, ThreadedServer

ACCOUNT_SID = "AC" + "0" * 31 + "1"
AUTH_TOKEN = "twilio-test-auth-token"


def signed_form(
    url: str, fields: Mapping[str, str] | Iterable[tuple[str, str]], token: str = AUTH_TOKEN
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a request Twilio makes to `url` with the form `fields`."""
    pairs = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
    if any(_unencodable(name + value) for name, value in pairs):
        # Text no UTF-8 holds (a lone surrogate): sent as the bytes Python would make of it,
        # unsigned (no signature can cover it); the service must refuse it, not fail.
        raw = [
            (n.encode(errors="surrogatepass"), v.encode(errors="surrogatepass")) for n, v in pairs
        ]
        return urlencode(raw).encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    return urlencode(pairs).encode(), {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": twilio_signature(token, url, pairs),
    }


def _unencodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


@dataclass
class TwilioReply:
    """What the stand-in answers a message to some number: `code` None is a 201 with a
    sid; else Twilio's error body with that code (and `raw`, if given, instead of it)."""

    status: int = 201
    code: int | None = None
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


@dataclass
class SentMessage:
    form: dict[str, str]
    headers: dict[str, str]
    """Header names in lower case."""
    sid: str | None
    status: int
    client: tuple[str, int]
    """The client's end of the connection: the same for messages sent on one connection."""


@dataclass
class Callback:
    url: str
    form: dict[str, str]
    answer: int
    content_type: str
    body: bytes


class TwilioStandIn(ThreadedServer):
    """Twilio's Messages API for one account, on a free local port (`url` is its
    origin: TWILIO_API_URL). `replies[to]` scripts the answer for a number, `script` the
    next answers whatever the number. After each accepted message, `receipts[to]` (default
    `["sent", "delivered"]`; a status may carry its ErrorCode as "undelivered:30003") are
    its status callbacks, queued until `post_callbacks()` posts them, signed with the
    auth token, to the message's StatusCallback (through `callbacks_via`, if set: the
    origin of a proxy in front of the web process, which Twilio's signature does not
    cover)."""

    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self.messages: list[SentMessage] = []
        self.refused_auth = 0
        self.replies: dict[str, TwilioReply] = {}
        self.script: collections.deque[TwilioReply] = collections.deque()
        self.receipts: dict[str, list[str]] = {}
        self.callbacks: list[Callback] = []
        self.callbacks_via: str | None = None
        self._queued: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        super().__init__(_handler_for(self))
        self.url = f"http://{HOST}:{self.port}"

    @property
    def path(self) -> str:
        return f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    @property
    def connections(self) -> int:
        """Connections the messages came on."""
        return len({m.client for m in self.messages})

    def to(self, number: str) -> list[SentMessage]:
        return [m for m in self.messages if m.form.get("To") == number]

    def post_callbacks(self) -> list[Callback]:
        """Post the queued status callbacks, in order, each signed as Twilio signs;
        returns them with the answers they got. Blocking: run it in a thread."""
        with self._lock:
            queued, self._queued = self._queued, []
        posted = []
        with httpx.Client(timeout=30) as http:
            for url, form in queued:
                body, headers = signed_form(url, form, self.auth_token)
                target = url
                if self.callbacks_via is not None:
                    parts = urlsplit(url)
                    target = (
                        self.callbacks_via + parts.path + (f"?{parts.query}" * bool(parts.query))
                    )
                response = http.post(target, content=body, headers=headers)
                callback = Callback(
                    url,
                    form,
                    response.status_code,
                    response.headers.get("content-type", ""),
                    response.content,
                )
                posted.append(callback)
        self.callbacks += posted
        return posted

    # In the server's threads.

    def answer(self, form: dict[str, str]) -> tuple[TwilioReply, str | None]:
        with self._lock:
            reply = self.script.popleft() if self.script else None
        reply = reply or self.replies.get(form.get("To", ""), TwilioReply())
        if reply.code is not None or not 200 <= reply.status < 300:
            return reply, None
        sid = "SM" + uuid.uuid4().hex
        for receipt in self.receipts.get(form["To"], ["sent", "delivered"]):
            status, _, error_code = receipt.partition(":")
            callback = {
                "AccountSid": self.account_sid,
                "ApiVersion": "2010-04-01",
                "From": form.get("From", ""),
                "MessageSid": sid,
                "MessageStatus": status,
                "SmsSid": sid,
                "SmsStatus": status,
                "To": form["To"],
                **({"ErrorCode": error_code} if error_code else {}),
                **(
                    {"MessagingServiceSid": form["MessagingServiceSid"]}
                    if "MessagingServiceSid" in form
                    else {}
                ),
            }
            with self._lock:
                self._queued.append((form["StatusCallback"], callback))
        return reply, sid


def _handler_for(twilio: TwilioStandIn) -> type[Handler]:
    credentials = f"{twilio.account_sid}:{twilio.auth_token}".encode()
    expected_auth = "Basic " + base64.b64encode(credentials).decode()

    class TwilioHandler(Handler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != twilio.path:
                return self._send(404, {"code": 20404, "message": "Not Found", "status": 404})
            if self.headers.get("Authorization") != expected_auth:
                twilio.refused_auth += 1
                return self._send(401, {"code": 20003, "message": "Authenticate", "status": 401})
            form = dict(parse_qsl(body.decode(), keep_blank_values=True))
            senders = [name for name in ("From", "MessagingServiceSid") if form.get(name)]
            missing = [name for name in ("To", "Body", "StatusCallback") if not form.get(name)]
            if missing or len(senders) != 1:
                problem = f"missing {missing}" if missing else f"senders {senders}"
                return self._send(400, {"code": 21604, "message": problem, "status": 400})
            reply, sid = twilio.answer(form)
            headers = {name.lower(): value for name, value in self.headers.items()}
            twilio.messages.append(
                SentMessage(form, headers, sid, reply.status, self.client_address)
            )
            if sid is not None:
                answer: Any = {"sid": sid, "status": "queued", "to": form["To"]}
            else:
                answer = {"code": reply.code, "message": reply.message, "status": reply.status}
            self._send(reply.status, answer, reply.headers, reply.raw)

        def _send(
            self,
            status: int,
            answer: Any,
            headers: dict[str, str] | None = None,
            raw: bytes | None = None,
        ) -> None:
            content = raw if raw is not None else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(content)

    return TwilioHandler
