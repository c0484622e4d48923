"""Extreme values in every date, number and string a route takes (property-based, with
hypothesis): years 1 and 9999 at offsets of +-14:00, 5e-324, -0.0, 1e308, NaN, Infinity,
NUL, huge integers, very long strings, and values of the wrong type. Whatever a request
holds, the answer is never a 5xx, and every other non-2xx has the `Error` body.

Each example is one request: a valid one of the route, with one to three of its fields
(body, path, query or header) replaced by extreme values. In-process (AsyncTestClient),
on the real PostgreSQL: the web process's own edge (header and URL limits) is
tests/app/test_edge.py's."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from uuid import UUID

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import AsyncTestClient

import app.services.twilio as twilio_service
from app.core.settings import Settings
from app.http.asgi import create_app
from db.pool import connect
from tests.conftest import Copies, fresh_database
from tests.fakes.twilio import signed_form
from tests.helpers import CAMPAIGNS, create_campaign, publish, recipients
from tests.tokens import TEST_SECRET, UNSUBSCRIBE_SECRET, bearer

WEBHOOK_SECRET = "provider-secret"
TWILIO_TOKEN = "twilio-token"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
EVERY_BRAND = bearer(brands=["*"])
LONG = "x" * 70_000

# Extreme values as JSON text: what a body field may be given.
DATES = [
    "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
    "0001-01-01T00:00:00-14:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-14:00",  # after year 9999 in UTC
    "9999-12-31T23:59:59+14:00",
    "9999-12-31T23:59:59.999999Z",
    "1969-12-31T23:59:59Z",
    "2026-02-30T00:00:00Z",
    "2026-12-01T10:00:00",  # no offset
    "2026-12-01T10:00:00+24:00",
]
CLOCKS = ["00:00", "23:59", "24:00", "23:60", "-1:00", "0:00", "12:00:00"]
STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    LONG,
    "é✓\u202e\U0001f600",
    "null",
    "*",
    "%FF",
    "../..",
    "localtime",
    "Factory",
    "US/Eastern",
    "Etc/GMT-14",
    "a@b.co",
    "+15550000000",
    "2026-12-01T10:00:00Z",
]
NUMBERS = [
    "5e-324",
    "-5e-324",
    "-0.0",
    "0",
    "1e-12",
    "0.01",
    "1e308",
    "-1e308",
    "1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "-1",
    str(2**31),
    str(2**63),
    str(2**64),
    "1" + "0" * 400,
]
OTHERS = ["true", "null", "[]", "{}", '[{"a": 1}]', '"\\ud800"', '"\\u0000"']
NESTED = [
    "[" * 3000 + "]" * 3000,  # past the decoder's recursion limit
    '{"a":' * 40 + "1" + "}" * 40,  # past a recipient data's depth
    '{"\\u0000": 1}',
    '{"a": "' + "x" * 5000 + '"}',  # past a recipient data's size
    '{"n": 1e999999}',  # past PostgreSQL's numeric
]
JSON_VALUES = [json.dumps(s) for s in [*DATES, *CLOCKS, *STRINGS]] + NUMBERS + OTHERS + NESTED
"""JSON text of every extreme value, for any body field."""
TEXTS = [*(t for t in STRINGS if t != LONG), "x" * 8000, *DATES, *NUMBERS, "true", "-", "0" * 400]
"""Extreme values as text, for path, query and header parameters (the longest within a
URL that an HTTP client sends: the web process refuses longer heads, test_edge.py)."""


@dataclass(frozen=True)
class Operation:
    method: str
    url: str
    """With `{campaign}` and `{run}` for the ids of the test's campaign and run, and
    `{path...}` for the path parameters that examples replace."""
    path: dict[str, str]
    query: dict[str, str]
    body: Any = None
    """JSON, or None without a body."""
    headers: dict[str, str] | None = None
    signed: str | None = None
    """"webhook", "sendgrid" or "twilio": the body is signed as that provider signs (a
    Twilio body is a form of the `body` object's fields)."""

    def fields(self) -> list[tuple[str, ...]]:
        """Everything an example may replace: ("path", name), ("query", name),
        ("header", name), and ("body", *JSON path) of every leaf of the body."""
        found = [("path", name) for name in self.path] + [("query", name) for name in self.query]
        found += [("header", name) for name in self.headers or {}]
        return found + [("body", *p) for p in _leaves(self.body)]


def _leaves(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*at, k))] or [at]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*at, i))] or [at]
    return [at]


CAMPAIGN_BODY = {
    "brand_id": "brand-a",
    "name": "n",
    "channel": "email",
    "body": "b",
    "subject": "s",
    "sender": "care@example.com",
    "priority": "normal",
    "quiet_hours": {"start": "21:00", "end": "08:00", "time_zone": "Europe/Paris"},
    "topic": "newsletter",
}
NOW = "2026-12-06T12:00:00Z"
DATA = {"name": "Ana", "visit": {"at": "15:30", "room": 7}, "tags": ["a", 1.5]}
"""A recipient's data, whose every leaf (and, from NESTED, whole shapes) examples replace;
the campaign's templates read `name` and `visit.at`."""
TEMPLATED = "Hi {{ data.name }}, at {{ data.visit.at | default: 'soon' }}{{ data.tags[1] }}"
OPERATIONS = [
    Operation("GET", "/schema/{page}", {"page": "openapi.json"}, {}),
    Operation("POST", CAMPAIGNS, {}, {}, CAMPAIGN_BODY),
    Operation("GET", CAMPAIGNS, {}, {"brand_id": "brand-a", "status": "active", "limit": "5"}),
    Operation("GET", CAMPAIGNS, {}, {"cursor": "AAAA"}),
    Operation("GET", f"{CAMPAIGNS}/{{id}}", {"id": "{campaign}"}, {}),
    Operation("PATCH", f"{CAMPAIGNS}/{{id}}", {"id": "{draft}"}, {}, CAMPAIGN_BODY | {"x": 1}),
    Operation("POST", f"{CAMPAIGNS}/{{id}}/activate", {"id": "{draft}"}, {}),
    Operation("POST", f"{CAMPAIGNS}/{{id}}/archive", {"id": "{draft}"}, {}),
    Operation(
        "POST",
        f"{CAMPAIGNS}/{{id}}/publish",
        {"id": "{campaign}"},
        {},
        {
            "recipients": [
                {
                    "person_id": "p",
                    "recipient": "a@example.com",
                    "time_zone": "Asia/Tokyo",
                    "data": DATA,
                }
            ],
            "send_at": NOW,
        },
        {"Idempotency-Key": "k"},
    ),
    Operation(
        "POST",
        f"{CAMPAIGNS}/{{id}}/preview",
        {"id": "{campaign}"},
        {},
        {"person_id": "p", "recipient": "a@example.com", "data": DATA},
    ),
    Operation("GET", f"{CAMPAIGNS}/{{id}}/runs", {"id": "{campaign}"}, {"status": "queued"}),
    Operation(
        "GET", f"{CAMPAIGNS}/{{id}}/runs/{{run_id}}", {"id": "{campaign}", "run_id": "{run}"}, {}
    ),
    Operation(
        "POST",
        f"{CAMPAIGNS}/{{id}}/runs/{{run_id}}/cancel",
        {"id": "{campaign}", "run_id": "{run}"},
        {},
    ),
    Operation(
        "POST",
        f"{CAMPAIGNS}/{{id}}/runs/{{run_id}}/retry",
        {"id": "{campaign}", "run_id": "{run}"},
        {},
        None,
        {"Idempotency-Key": "k"},
    ),
    Operation(
        "GET",
        f"{CAMPAIGNS}/{{id}}/runs/{{run_id}}/deliveries",
        {"id": "{campaign}", "run_id": "{run}"},
        {"status": "pending", "limit": "2", "cursor": "AAAA"},
    ),
    Operation(
        "PUT",
        "/v1/messaging/brands/{brand_id}/suppressions/{recipient}",
        {"brand_id": "brand-a", "recipient": "a@example.com"},
        {},
        {"reason": "manual"},
    ),
    Operation(
        "GET",
        "/v1/messaging/brands/{brand_id}/suppressions/{recipient}",
        {"brand_id": "brand-a", "recipient": "a@example.com"},
        {},
    ),
    Operation(
        "DELETE",
        "/v1/messaging/brands/{brand_id}/suppressions/{recipient}",
        {"brand_id": "brand-a", "recipient": "a@example.com"},
        {},
    ),
    Operation(
        "GET",
        "/v1/messaging/brands/{brand_id}/suppressions",
        {"brand_id": "brand-a"},
        {"reason": "manual", "topic": "newsletter", "limit": "1", "cursor": "AAAA"},
    ),
    *(
        Operation(
            method,
            "/v1/messaging/brands/{brand_id}/topics/{topic}/suppressions/{recipient}",
            {"brand_id": "brand-a", "topic": "newsletter", "recipient": "a@example.com"},
            {},
            {"reason": "unsubscribed"} if method == "PUT" else None,
        )
        for method in ("PUT", "GET", "DELETE")
    ),
    Operation("GET", "/v1/messaging/unsubscribe/{token}", {"token": "{token}"}, {}),
    Operation(
        "POST",
        "/v1/messaging/unsubscribe/{token}",
        {"token": "{token}"},
        {},
        {"List-Unsubscribe": "One-Click"},
    ),
    Operation(
        "PUT",
        "/v1/messaging/brands/{brand_id}/rate-limit",
        {"brand_id": "brand-a"},
        {},
        {"email_per_second": 5, "sms_per_second": None},
    ),
    Operation("GET", "/v1/messaging/brands/{brand_id}/rate-limit", {"brand_id": "brand-a"}, {}),
    Operation(
        "POST",
        "/v1/messaging/providers/webhook/events",
        {},
        {},
        {
            "events": [
                {
                    "delivery_id": "{run}:0",
                    "type": "bounced",
                    "occurred_at": NOW,
                    "detail": "550",
                }
            ]
        },
        signed="webhook",
    ),
    Operation(
        "POST",
        "/v1/messaging/providers/sendgrid/events",
        {},
        {},
        [
            {
                "event": "bounce",
                "type": "bounce",
                "timestamp": 1795860000,
                "delivery_id": "{run}:0",
                "reason": "550",
                "response": "550",
                "email": "a@example.com",
            }
        ],
        signed="sendgrid",
    ),
    Operation(
        "POST",
        "/v1/messaging/providers/twilio/status",
        {},
        {},
        {"MessageSid": "{sid}", "MessageStatus": "undelivered", "ErrorCode": "30003"},
        signed="twilio",
    ),
    Operation(
        "POST",
        "/v1/messaging/providers/twilio/inbound",
        {},
        {},
        {
            "From": "+15557654321",
            "To": "+15550000000",
            "Body": "STOP",
            "OptOutType": "STOP",
            "MessagingServiceSid": "MG1",
        },
        signed="twilio",
    ),
]
TWILIO_BASE = "http://testserver.local"  # the test client's origin, as PUBLIC_BASE_URL


@pytest.fixture(scope="module")
def module_database_url(copies: Copies) -> Iterator[str]:
    """One database for the whole module: what examples leave behind changes no answer's
    class (a 4xx stays a 4xx), and a copy per operation would cost more than its requests.
    Given back behind the tests as every copy is, emptied for a later test or dropped (its
    drop in the teardown took 18-30 s in CI runs)."""
    with fresh_database(copies) as url:
        yield url


@pytest.fixture(scope="module")
async def client(module_database_url: str) -> AsyncIterator[AsyncTestClient[Litestar]]:
    sendgrid_key = SENDGRID_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings = Settings(
        database_url=module_database_url,
        jwt_secret=TEST_SECRET,
        webhook_secret=WEBHOOK_SECRET,
        sendgrid_webhook_public_key=base64.b64encode(sendgrid_key).decode(),
        unsubscribe_secrets=UNSUBSCRIBE_SECRET,
        twilio_auth_token=TWILIO_TOKEN,
        twilio_messaging_service_sid="MG1",
        public_base_url=TWILIO_BASE,
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
async def ids(client: AsyncTestClient[Litestar], module_database_url: str) -> dict[str, str]:
    """A campaign with a run, and a draft."""
    campaign = await create_campaign(client, body=TEMPLATED, html_body=f"<p>{TEMPLATED}</p>")
    people = [person | {"data": DATA} for person in recipients(2)]
    run = await publish(client, campaign["id"], {"recipients": people})
    draft = await create_campaign(client, activate=False)
    await create_campaign(client, channel="sms")
    # A sent delivery that Twilio's receipts name.
    sid = "SM" + "0" * 32
    conn = await connect(module_database_url)
    try:
        await conn.execute(
            "UPDATE deliveries SET status = 'sent', provider_message_id = $2"
            " WHERE run_id = $1 AND position = 0",
            UUID(run.json()["id"]),
            sid,
        )
        await conn.execute(
            "INSERT INTO awaited_receipts (message_id, run_id, position) VALUES ($2, $1, 0)",
            UUID(run.json()["id"]),
            sid,
        )
    finally:
        await conn.close()
    token = client.app.state.unsubscribe_keys.token(
        brand_id="brand-a", topic="newsletter", address="a@example.com", run_id=uuid.uuid4()
    )
    return {
        "campaign": campaign["id"],
        "run": run.json()["id"],
        "draft": draft["id"],
        "token": token,
        "sid": sid,
    }


@pytest.fixture(scope="module", autouse=True)
def unknown_sids_at_once() -> Iterator[None]:
    """A receipt of an unknown sid is looked up again for 2 s (app/services/twilio.py):
    here, where examples name unknown sids by the dozen, not again."""
    kept = twilio_service.LOOKUP_AGAIN_AFTER
    twilio_service.LOOKUP_AGAIN_AFTER = ()
    yield
    twilio_service.LOOKUP_AGAIN_AFTER = kept


def _fill(text: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        text = text.replace(f"{{{name}}}", value)
    return text


def _put(value: Any, at: tuple[Any, ...], raw: str) -> Any:
    """`value` with the leaf at `at` replaced by a marker for the JSON text `raw`."""
    if not at:
        return f"\x01RAW{raw}\x01"
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[at[0]] = _put(value[at[0]], at[1:], raw)
    return copy


def _json(value: Any) -> bytes:
    """JSON of `value`, markers replaced by their raw JSON text (which may be no JSON)."""
    text = json.dumps(value)
    while (start := text.find('"\\u0001RAW')) != -1:
        end = text.index('\\u0001"', start)
        raw = json.loads(text[start : end + len('\\u0001"')])[4:-1]
        text = text[:start] + raw + text[end + len('\\u0001"') :]
    return text.encode()


def _signed(kind: str | None, body: bytes) -> dict[str, str]:
    if kind == "webhook":
        digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        return {"X-Signature": f"sha256={digest}"}
    if kind == "sendgrid":
        timestamp = str(int(time.time()))
        signature = SENDGRID_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }
    return {}


def _get(value: Any, at: tuple[Any, ...]) -> Any:
    for key in at:
        value = value[key]
    return value


def _kin(value: Any) -> list[str]:
    """The extreme values of the same kind as a field's valid `value`, as JSON text: half
    of the values an example puts in a field are of its kind, the others anything."""
    if isinstance(value, bool) or value is None:
        return OTHERS
    if isinstance(value, int | float):
        return NUMBERS
    if isinstance(value, str) and value[:4].isdigit() and "T" in value:
        return [json.dumps(d) for d in DATES]
    if isinstance(value, str) and len(value) == 5 and value[2] == ":":
        return [json.dumps(c) for c in CLOCKS]
    return [json.dumps(t) for t in STRINGS]


def _text(value: Any) -> str:
    """A form field's value: a string as it is, an extreme JSON value as its text (a JSON
    string decoded)."""
    if isinstance(value, str) and value.startswith("\x01RAW"):
        raw = value[4:-1]
        try:
            decoded = json.loads(raw)
        except ValueError:
            return raw
        return decoded if isinstance(decoded, str) else raw
    return str(value)


def _header_safe(text: str) -> bool:
    return text.isascii() and text.isprintable() and len(text) < 8000


@st.composite
def requests(draw: st.DrawFn, operation: Operation, ids: dict[str, str]) -> dict[str, Any]:
    fields = operation.fields()
    chosen = draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True))
    path = {k: _fill(v, ids) for k, v in operation.path.items()}
    query = dict(operation.query)
    headers = dict(operation.headers or {})
    body = json.loads(_fill(json.dumps(operation.body), ids))
    for where, *at in chosen:
        if where == "path":
            path[at[0]] = draw(st.sampled_from(TEXTS))
        elif where == "query":
            query[at[0]] = draw(st.sampled_from(TEXTS))
        elif where == "header":
            headers[at[0]] = draw(st.sampled_from([t for t in TEXTS if _header_safe(t)]))
        else:
            kin = _kin(_get(operation.body, tuple(at)))
            body = _put(body, tuple(at), draw(st.sampled_from(kin) | st.sampled_from(JSON_VALUES)))
    url = operation.url
    for name, value in path.items():
        url = url.replace(f"{{{name}}}", quote(value, safe=""))
    request: dict[str, Any] = {"method": operation.method, "url": url, "params": query}
    if operation.signed == "twilio":
        fields = {name: _text(value) for name, value in body.items()}
        content, signed = signed_form(TWILIO_BASE + url, fields, TWILIO_TOKEN)
        request["content"] = content
        headers |= signed
    elif operation.body is not None:
        content = _json(body)
        headers |= {"Content-Type": "application/json", **_signed(operation.signed, content)}
        request["content"] = content
    request["headers"] = {**EVERY_BRAND, **headers}
    return request


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda o: f"{o.method} {o.url}")
@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_no_extreme_value_reaches_a_5xx_and_every_refusal_has_the_error_body(
    client, ids, operation, data
):
    request = data.draw(requests(operation, ids))

    response = await client.request(**request)

    shown = (request["method"], request["url"][:200], str(request.get("content"))[:300])
    assert response.status_code < 500, (shown, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) <= {"error", "message", "details"}, (shown, body)
        assert isinstance(body["error"], str) and isinstance(body["message"], str)
