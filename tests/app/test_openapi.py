"""The OpenAPI document against the running routes.

The tour below makes every route answer every status its operation documents, and only
those, one test an (operation, status) pair: a status documented without a scenario, or a
scenario of an undocumented status, fails. Each real response is validated against the
documented schema (strictly: an undocumented field fails too), its documented headers must
be there, and the bodies the happy paths send must match the documented request body.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from app.domain.access import AUDIT_READ
from app.http.asgi import create_app
from app.http.body import CAMPAIGN_BODY_BYTES
from app.services.feedback import MAX_BODY_BYTES as FEEDBACK_MAX_BODY
from app.services.idempotency import lock_id
from app.services.twilio import MAX_FORM_BYTES as TWILIO_MAX_BODY
from db.pool import connect
from tests.conftest import Copies, fresh_database, settings_of
from tests.fakes.twilio import signed_form
from tests.helpers import CAMPAIGNS, create_campaign, database_unreachable, recipients
from tests.tokens import ALL_SCOPES, bearer

BRANDS = "/v1/messaging/brands"
MAX_BODY = 64 * 1024  # small, so that 413 needs no huge body
WEBHOOK_SECRET = "tour-secret"
TWILIO_TOKEN = "tour-twilio-token"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
PROVIDERS = "/v1/messaging/providers"
# Routes that providers call, authenticated by a signature instead of a token.
SIGNED = {
    f"{PROVIDERS}/webhook/events": "WebhookSignature",
    f"{PROVIDERS}/sendgrid/events": "SendGridSignature",
    f"{PROVIDERS}/twilio/status": "TwilioSignature",
    f"{PROVIDERS}/twilio/inbound": "TwilioSignature",
}
UNSUBSCRIBE = "/v1/messaging/unsubscribe/{token}"
PUBLIC = ("/healthz", "/readyz", UNSUBSCRIBE)
"""Routes without a token or a signature (an unsubscribe link's token is in its path)."""
TWILIO_BASE = "http://testserver.local"  # the test client's origin, as PUBLIC_BASE_URL
APP_TABLES = (
    "campaigns",
    "runs",
    "deliveries",
    "suppressions",
    "idempotency_keys",
    "brand_rate_limits",
    "audit_events",
)

Op = tuple[str, str]  # (method, path as documented)
Request = dict[str, Any]  # keyword arguments of client.request besides the method


def tour_app(database_url: str) -> Litestar:
    public_key = SENDGRID_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return create_app(
        replace(
            settings_of(database_url),
            publish_max_body_bytes=MAX_BODY,
            webhook_secret=WEBHOOK_SECRET,
            sendgrid_webhook_public_key=public_key.decode(),
            twilio_auth_token=TWILIO_TOKEN,
            public_base_url=TWILIO_BASE,
        )
    )


async def test_schema_is_openapi_3_1_served_without_a_token_with_interactive_docs(client):
    response = await client.get("/schema/openapi.json")
    docs = await client.get("/schema")

    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    scheme = document["components"]["securitySchemes"]["BearerToken"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "Bearer", "JWT")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")


async def test_the_document_is_json_only_and_unknown_pages_answer_the_error_body(client):
    """YAML was rendered per request with pure-Python yaml.dump: ~110 ms of event loop
    that any anonymous caller could ask for again and again."""
    for page in ("/schema/openapi.yaml", "/schema/openapi.yml", "/schema/nothing", "/schema/x/y"):
        response = await client.get(page)

        assert response.status_code == 404, page
        assert response.headers["content-type"].startswith("application/json"), page
        assert response.json()["error"] == "not_found"
        assert set(response.json()) <= {"error", "message", "details"}
    pages = ["/schema/openapi.json", "/schema", "/schema/redoc", "/schema/swagger"]
    first = [(await client.get(page)).content for page in pages]
    again = [(await client.get(page)).content for page in pages]
    assert first == again  # rendered once: the same document every time


async def test_every_route_is_documented(client):
    document = (await client.get("/schema/openapi.json")).json()
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "put", "post", "patch", "delete"}
    }

    routed = {
        (method, route.path_format)
        for route in client.app.routes
        # /metrics speaks Prometheus, not the API: it is left out of the document.
        if isinstance(route, HTTPRoute)
        and not route.path.startswith("/schema")
        and route.path != "/metrics"
        for method in route.methods - {"OPTIONS", "HEAD"}
    }

    assert routed == documented
    for method, path in documented:
        operation = document["paths"][path][method.lower()]
        public = path in PUBLIC
        if path in SIGNED:
            assert operation["security"] == [{SIGNED[path]: []}]
            assert path.startswith(f"{PROVIDERS}/")  # left out of the bearer check (auth.py)
        else:
            assert operation["security"] == (
                [{}] if public else [{"BearerToken": [scope_of(operation)]}]
            )
        assert operation.get("description"), (method, path)


def scope_of(operation: dict[str, Any]) -> str:
    (requirement,) = operation["security"]
    (scope,) = requirement["BearerToken"]
    assert f"`{scope}`" in operation["description"]
    return str(scope)


def error_ops(document: dict[str, Any]) -> dict[Op, dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in {"get", "put", "post", "patch", "delete"}
    }


async def test_every_error_response_is_documented_with_the_error_body(client):
    document = (await client.get("/schema/openapi.json")).json()

    for op, operation in error_ops(document).items():
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                (media,) = response["content"].values()
                assert media["schema"] == {"$ref": "#/components/schemas/Error"}, (op, status)
    assert document["components"]["schemas"]["Error"]["required"] == ["error", "message"]


# The tour


@dataclass
class Tour:
    client: Any
    db: Any
    document: dict[str, Any]

    async def campaign(self, *, activate: bool = True, brand: str = "brand-a") -> dict[str, Any]:
        return await create_campaign(self.client, brand=brand, activate=activate)

    async def run(self) -> tuple[dict[str, Any], dict[str, Any]]:
        campaign = await self.campaign()
        response = await self.client.post(
            f"{CAMPAIGNS}/{campaign['id']}/publish",
            json={"recipients": recipients(3)},
            headers=bearer(),
        )
        return campaign, response.json()

    async def suppression(self) -> str:
        address = f"{uuid.uuid4().hex[:8]}@example.com"
        response = await self.client.put(
            f"{BRANDS}/brand-a/suppressions/{address}", json={"reason": "manual"}, headers=bearer()
        )
        assert response.status_code == 200
        return address

    async def send(self, op: Op, request: Request, *, headers: dict[str, str] | None = None) -> Any:
        method, _ = op
        return await self.client.request(
            method, **{**request, "headers": {**request.get("headers", {}), **(headers or {})}}
        )

    def check(self, op: Op, status: int, response: Any, request: Request | None = None) -> None:
        """`response` has `status`, a body and headers as documented for it."""
        method, path = op
        assert response.status_code == status, (op, status, response.text)
        operation = self.document["paths"][path][method.lower()]
        documented = operation["responses"].get(str(status))
        assert documented is not None, f"{op} answered {status}, which is not documented"
        for header in documented.get("headers", {}):
            assert header.lower() in response.headers, (op, status, header)
        content = documented.get("content")
        if content is None:
            assert response.content == b"", (op, status)
        elif list(content) == ["text/html"]:  # an unsubscribe link's page
            assert response.headers["content-type"].startswith("text/html"), (op, status)
            assert response.text.startswith("<!doctype html>"), (op, status)
        else:
            ((media_type, media),) = content.items()
            assert response.headers["content-type"].startswith(media_type), (op, status)
            if media_type == "application/json":
                validate(self.document, media["schema"], response.json(), (op, status))
        sent = request or {}
        if "requestBody" in operation and ("json" in sent or "content" in sent):
            body = sent["json"] if "json" in sent else json.loads(sent["content"])
            (media,) = operation["requestBody"]["content"].values()
            validate(self.document, media["schema"], body, (op, "request body"))


def strict(node: Any) -> Any:
    """The schema with every object closed: a field the document does not name fails."""
    if isinstance(node, dict):
        node = {key: strict(value) for key, value in node.items()}
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        return node
    if isinstance(node, list):
        return [strict(value) for value in node]
    return node


def validate(document: dict[str, Any], schema: dict[str, Any], value: Any, where: Any) -> None:
    root = {"components": strict(copy.deepcopy(document["components"])), **schema}
    validator = jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(value)]
    assert not errors, (where, errors)


# A request that succeeds, for each operation.


async def create_req(t: Tour) -> Request:
    body = {"brand_id": "brand-a", "name": "n", "channel": "sms", "body": "b"}
    return {"url": CAMPAIGNS, "json": body, "headers": bearer()}


async def list_req(t: Tour) -> Request:
    await t.campaign()
    return {"url": CAMPAIGNS, "params": {"brand_id": "brand-a"}, "headers": bearer()}


async def read_req(t: Tour) -> Request:
    return {"url": f"{CAMPAIGNS}/{(await t.campaign())['id']}", "headers": bearer()}


async def patch_req(t: Tour) -> Request:
    campaign = await t.campaign(activate=False)
    return {"url": f"{CAMPAIGNS}/{campaign['id']}", "json": {"name": "m"}, "headers": bearer()}


async def activate_req(t: Tour) -> Request:
    campaign = await t.campaign(activate=False)
    return {"url": f"{CAMPAIGNS}/{campaign['id']}/activate", "headers": bearer()}


async def archive_req(t: Tour) -> Request:
    return {"url": f"{CAMPAIGNS}/{(await t.campaign())['id']}/archive", "headers": bearer()}


async def publish_req(t: Tour) -> Request:
    campaign = await t.campaign()
    return {
        "url": f"{CAMPAIGNS}/{campaign['id']}/publish",
        "json": {"recipients": recipients(2)},
        "headers": bearer(),
    }


async def preview_req(t: Tour) -> Request:
    campaign = await t.campaign()
    return {
        "url": f"{CAMPAIGNS}/{campaign['id']}/preview",
        "json": {"person_id": "p1", "recipient": "ann@example.com", "data": {"name": "Ann"}},
        "headers": bearer(scopes=["messaging:campaigns:read"]),
    }


async def runs_req(t: Tour) -> Request:
    campaign, _ = await t.run()
    return {"url": f"{CAMPAIGNS}/{campaign['id']}/runs", "headers": bearer()}


async def run_req(t: Tour) -> Request:
    campaign, run = await t.run()
    return {"url": f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}", "headers": bearer()}


async def deliveries_req(t: Tour) -> Request:
    campaign, run = await t.run()
    url = f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/deliveries"
    return {"url": url, "params": {"status": "pending"}, "headers": bearer()}


async def cancel_req(t: Tour) -> Request:
    campaign, run = await t.run()
    return {"url": f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/cancel", "headers": bearer()}


async def suppressions_req(t: Tour) -> Request:
    await t.suppression()
    return {"url": f"{BRANDS}/brand-a/suppressions", "headers": bearer()}


async def suppression_req(t: Tour) -> Request:
    return {"url": f"{BRANDS}/brand-a/suppressions/{await t.suppression()}", "headers": bearer()}


async def rate_limit_req(t: Tour) -> Request:
    return {"url": f"{BRANDS}/brand-a/rate-limit", "headers": bearer()}


async def put_rate_limit_req(t: Tour) -> Request:
    body = {"email_per_second": 50, "sms_per_second": None}
    return {"url": f"{BRANDS}/brand-a/rate-limit", "json": body, "headers": bearer()}


async def audit_req(t: Tour) -> Request:
    await t.suppression()  # a change: a row to list
    return {"url": f"{BRANDS}/brand-a/audit", "headers": bearer(scopes=[AUDIT_READ])}


async def put_suppression_req(t: Tour) -> Request:
    url = f"{BRANDS}/brand-a/suppressions/new@example.com"
    return {"url": url, "json": {"reason": "bounced"}, "headers": bearer()}


async def delete_suppression_req(t: Tour) -> Request:
    return {"url": f"{BRANDS}/brand-a/suppressions/{await t.suppression()}", "headers": bearer()}


async def topic_suppression(t: Tour) -> str:
    address = f"{uuid.uuid4().hex[:8]}@example.com"
    response = await t.client.put(
        f"{BRANDS}/brand-a/topics/news/suppressions/{address}",
        json={"reason": "unsubscribed"},
        headers=bearer(),
    )
    assert response.status_code == 200
    return address


async def topic_suppression_req(t: Tour) -> Request:
    address = await topic_suppression(t)
    return {"url": f"{BRANDS}/brand-a/topics/news/suppressions/{address}", "headers": bearer()}


async def put_topic_suppression_req(t: Tour) -> Request:
    url = f"{BRANDS}/brand-a/topics/news/suppressions/new@example.com"
    return {"url": url, "json": {"reason": "manual"}, "headers": bearer()}


def unsubscribe_url(t: Tour) -> str:
    keys = t.client.app.state.unsubscribe_keys
    token = keys.token(
        brand_id="brand-a", topic="news", address="ann@example.com", run_id=uuid.uuid4()
    )
    return f"/v1/messaging/unsubscribe/{token}"


async def unsubscribe_page_req(t: Tour) -> Request:
    return {"url": unsubscribe_url(t)}


async def unsubscribe_req(t: Tour) -> Request:
    return {
        "url": unsubscribe_url(t),
        "content": b"List-Unsubscribe=One-Click",
        "headers": {"Content-Type": "application/x-www-form-urlencoded"},
    }


async def fail_run(db: Any, run_id: str) -> None:
    """What workers leave behind when every delivery of the run that was not skipped at
    publish failed."""
    await db.execute(
        "UPDATE deliveries SET status = 'failed', attempts = 1"
        " WHERE run_id = $1 AND status = 'pending'",
        uuid.UUID(run_id),
    )
    await db.execute(
        "UPDATE runs SET status = 'completed', failed_count = total_recipients - skipped_count,"
        " started_at = now(), completed_at = now() WHERE id = $1",
        uuid.UUID(run_id),
    )


async def retry_req(t: Tour) -> Request:
    campaign, run = await t.run()
    await fail_run(t.db, run["id"])
    return {"url": f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/retry", "headers": bearer()}


def webhook_signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Signature": f"sha256={digest}"}


def sendgrid_signed(body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))  # SendGrid signs now; older is a replay
    signature = SENDGRID_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


async def webhook_events_req(t: Tour) -> Request:
    _, run = await t.run()
    events = [
        {"delivery_id": f"{run['id']}:0", "type": "bounced", "occurred_at": "2026-11-28T10:00:00Z"},
        {"delivery_id": "unknown", "type": "delivered", "occurred_at": "2026-11-28T10:00:00Z"},
    ]
    body = json.dumps({"events": events}).encode()
    return {"url": f"{PROVIDERS}/webhook/events", "content": body, "headers": webhook_signed(body)}


async def sendgrid_events_req(t: Tour) -> Request:
    _, run = await t.run()
    events = [{"event": "delivered", "timestamp": 1795860000, "delivery_id": f"{run['id']}:1"}]
    body = json.dumps(events).encode()
    return {
        "url": f"{PROVIDERS}/sendgrid/events",
        "content": body,
        "headers": sendgrid_signed(body),
    }


def twilio_signed(path: str, form: dict[str, str]) -> Request:
    body, headers = signed_form(TWILIO_BASE + path, form, TWILIO_TOKEN)
    return {"url": path, "content": body, "headers": headers}


async def twilio_status_req(t: Tour) -> Request:
    _, run = await t.run()
    sid = f"SM{uuid.uuid4().hex}"
    await t.db.execute(
        "UPDATE deliveries SET status = 'sent', provider_message_id = $2"
        " WHERE run_id = $1 AND position = 0",
        uuid.UUID(run["id"]),
        sid,
    )
    await t.db.execute(
        "INSERT INTO awaited_receipts (message_id, run_id, position) VALUES ($2, $1, 0)",
        uuid.UUID(run["id"]),
        sid,
    )
    form = {"MessageSid": sid, "MessageStatus": "delivered", "To": "+15557654321"}
    return twilio_signed(f"{PROVIDERS}/twilio/status", form)


async def twilio_inbound_req(t: Tour) -> Request:
    await t.campaign()
    form = {"From": "+15557654321", "To": "+15550000000", "Body": "STOP"}
    return twilio_signed(f"{PROVIDERS}/twilio/inbound", form)


async def healthz_req(t: Tour) -> Request:
    return {"url": "/healthz"}


async def readyz_req(t: Tour) -> Request:
    return {"url": "/readyz"}


C = CAMPAIGNS
S = f"{BRANDS}/{{brand_id}}/suppressions"
T = f"{BRANDS}/{{brand_id}}/topics/{{topic}}/suppressions/{{recipient}}"
R = f"{BRANDS}/{{brand_id}}/rate-limit"
A = f"{BRANDS}/{{brand_id}}/audit"
HAPPY: dict[Op, tuple[int, Callable[[Tour], Awaitable[Request]]]] = {
    ("POST", C): (201, create_req),
    ("GET", C): (200, list_req),
    ("GET", f"{C}/{{id}}"): (200, read_req),
    ("PATCH", f"{C}/{{id}}"): (200, patch_req),
    ("POST", f"{C}/{{id}}/activate"): (200, activate_req),
    ("POST", f"{C}/{{id}}/archive"): (200, archive_req),
    ("POST", f"{C}/{{id}}/publish"): (202, publish_req),
    ("POST", f"{C}/{{id}}/preview"): (200, preview_req),
    ("GET", f"{C}/{{id}}/runs"): (200, runs_req),
    ("GET", f"{C}/{{id}}/runs/{{run_id}}"): (200, run_req),
    ("GET", f"{C}/{{id}}/runs/{{run_id}}/deliveries"): (200, deliveries_req),
    ("POST", f"{C}/{{id}}/runs/{{run_id}}/cancel"): (200, cancel_req),
    ("POST", f"{C}/{{id}}/runs/{{run_id}}/retry"): (202, retry_req),
    ("POST", f"{PROVIDERS}/webhook/events"): (200, webhook_events_req),
    ("POST", f"{PROVIDERS}/sendgrid/events"): (200, sendgrid_events_req),
    ("POST", f"{PROVIDERS}/twilio/status"): (200, twilio_status_req),
    ("POST", f"{PROVIDERS}/twilio/inbound"): (200, twilio_inbound_req),
    ("GET", S): (200, suppressions_req),
    ("GET", f"{S}/{{recipient}}"): (200, suppression_req),
    ("PUT", f"{S}/{{recipient}}"): (200, put_suppression_req),
    ("GET", R): (200, rate_limit_req),
    ("PUT", R): (200, put_rate_limit_req),
    ("GET", A): (200, audit_req),
    ("DELETE", f"{S}/{{recipient}}"): (204, delete_suppression_req),
    ("GET", T): (200, topic_suppression_req),
    ("PUT", T): (200, put_topic_suppression_req),
    ("DELETE", T): (204, topic_suppression_req),
    ("GET", UNSUBSCRIBE): (200, unsubscribe_page_req),
    ("POST", UNSUBSCRIBE): (200, unsubscribe_req),
    ("GET", "/healthz"): (200, healthz_req),
    ("GET", "/readyz"): (200, readyz_req),
}


def with_url(request: Request, url: str) -> Request:
    return {**request, "url": url}


async def not_found(t: Tour, op: Op) -> Any:
    """The resource in the path belongs to another brand."""
    _, path = op
    request = await HAPPY[op][1](t)
    if path.startswith(S) or path == T:
        return await t.send(op, with_url(request, request["url"].replace("@", "-gone@")))
    if path == A:  # another brand's trail: not found, as another brand's campaign
        return await t.send(op, with_url(request, request["url"].replace("brand-a", "brand-b")))
    if path == UNSUBSCRIBE:  # an altered token: a JSON 404 to a client that is no browser
        return await t.send(op, with_url(request, request["url"][:-4] + "AAAA"))
    theirs = await t.campaign(brand="brand-b")
    url = request["url"].split("/")
    url[4] = theirs["id"]  # /v1/messaging/campaigns/{id}/...
    return await t.send(op, with_url(request, "/".join(url)))


async def bad_request(t: Tour, op: Op) -> Any:
    method, path = op
    request = await HAPPY[op][1](t)
    if path.endswith("{recipient}"):
        url = request["url"].rsplit("/", 1)[0]
        return await t.send(op, with_url(request, f"{url}/nobody"))
    if method == "GET" and path.endswith(
        ("/campaigns", "/runs", "/deliveries", "/suppressions", "/audit")
    ):
        return await t.send(op, {**request, "params": {"limit": 0}})
    if path.endswith("/activate"):
        await t.db.execute("UPDATE campaigns SET body = '' WHERE status = 'draft'")
        return await t.send(op, request)
    if "json" in request:
        return await t.send(op, {**request, "json": {"name": ""}})
    url = request["url"].split("/")
    url[-1 if path.endswith("id}") else -2] = "%FF"  # the last id: not UTF-8
    return await t.send(op, with_url(request, "/".join(url)))


async def too_large(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    # Over every route's limit: publish's MAX_BODY here, a campaign's 1 MiB.
    padding = "x" * max(MAX_BODY, CAMPAIGN_BODY_BYTES)
    return await t.send(op, {**request, "json": {"padding": padding}})


async def bad_state(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    campaign_url = "/".join(request["url"].split("/")[:5])
    await t.client.post(f"{campaign_url}/archive", headers=bearer())
    return await t.send(op, request)


async def publish_in_flight(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    campaign_id = uuid.UUID(request["url"].split("/")[4])
    # This connection holds the key's lock, as a publish in flight would.
    await t.db.execute("SELECT pg_advisory_lock($1)", lock_id(campaign_id, "k"))
    try:
        return await t.send(op, request, headers={"Idempotency-Key": "k"})
    finally:
        await t.db.execute("SELECT pg_advisory_unlock($1)", lock_id(campaign_id, "k"))


async def publish_key_reused(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    await t.send(op, request, headers={"Idempotency-Key": "k"})
    other = {**request, "json": {"recipients": recipients(5)}}
    return await t.send(op, other, headers={"Idempotency-Key": "k"})


async def not_json(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    request = {key: value for key, value in request.items() if key != "json"}
    return await t.send(op, {**request, "content": b"x"}, headers={"Content-Type": "text/plain"})


async def cancel_twice(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    await t.send(op, request)
    return await t.send(op, request)


async def retry_bad_key(t: Tour, op: Op) -> Any:
    return await t.send(op, await HAPPY[op][1](t), headers={"Idempotency-Key": '"unclosed'})


async def retry_key_reused(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    await t.send(op, request, headers={"Idempotency-Key": "k"})
    # Another ended run of the same campaign, retried with the same key.
    campaign_id = request["url"].split("/")[4]
    publish = {"recipients": recipients(2)}
    run = await t.client.post(f"{C}/{campaign_id}/publish", json=publish, headers=bearer())
    await fail_run(t.db, run.json()["id"])
    other = f"{C}/{campaign_id}/runs/{run.json()['id']}/retry"
    return await t.send(op, with_url(request, other), headers={"Idempotency-Key": "k"})


async def provider_body(
    t: Tour, op: Op, body: bytes, content_type: str = "application/json"
) -> Any:
    """`body`, signed as the provider of `op` signs."""
    sign = webhook_signed if "webhook" in op[1] else sendgrid_signed
    headers = {**sign(body), "Content-Type": content_type}
    return await t.send(op, {"url": op[1], "content": body, "headers": headers})


async def provider_malformed(t: Tour, op: Op) -> Any:
    return await provider_body(
        t, op, b'{"events": {"type": "opened"}}' if "webhook" in op[1] else b"{}"
    )


async def provider_unsigned(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    return await t.send(op, {**request, "headers": {"Content-Type": "application/json"}})


async def provider_too_large(t: Tour, op: Op) -> Any:
    return await provider_body(t, op, b"[" + b" " * FEEDBACK_MAX_BODY + b"]")


async def provider_not_json(t: Tour, op: Op) -> Any:
    return await provider_body(t, op, b"[]", content_type="text/plain")


async def twilio_unsigned(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    headers = {**request["headers"], "X-Twilio-Signature": "0/KCTR6DLpKmkAf8muzZqo1nDgQ="}
    return await t.send(op, {**request, "headers": headers})


async def twilio_too_large(t: Tour, op: Op) -> Any:
    return await t.send(op, twilio_signed(op[1], {"Body": "x" * TWILIO_MAX_BODY}))


async def foreign_brand(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    return await t.send(op, request, headers=bearer(brands=["brand-b"]))


async def deliveries_purged(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    run_id = uuid.UUID(request["url"].split("/")[6])
    await t.db.execute(
        "UPDATE runs SET status = 'cancelled', completed_at = now(), deliveries_purged_at = now()"
        " WHERE id = $1",
        run_id,
    )
    return await t.send(op, request)


async def unsubscribe_too_large(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    return await t.send(op, {**request, "content": b"List-Unsubscribe=One-Click&" * 1000})


SPECIFIC: dict[tuple[str, str, int], Callable[[Tour, Op], Awaitable[Any]]] = {
    ("POST", UNSUBSCRIBE, 413): unsubscribe_too_large,
    ("POST", f"{C}/{{id}}/publish", 409): publish_in_flight,
    ("POST", f"{C}/{{id}}/publish", 422): publish_key_reused,
    ("POST", f"{C}/{{id}}/runs/{{run_id}}/cancel", 412): cancel_twice,
    ("GET", f"{C}/{{id}}/runs/{{run_id}}/deliveries", 410): deliveries_purged,
    ("POST", f"{C}/{{id}}/runs/{{run_id}}/retry", 410): deliveries_purged,
    ("POST", f"{C}/{{id}}/runs/{{run_id}}/retry", 400): retry_bad_key,
    ("POST", f"{C}/{{id}}/runs/{{run_id}}/retry", 409): publish_in_flight,
    ("POST", f"{C}/{{id}}/runs/{{run_id}}/retry", 422): retry_key_reused,
    **{
        ("POST", path, status): scenario
        for path in SIGNED
        for status, scenario in [
            (400, provider_malformed),
            (401, provider_unsigned),
            (413, provider_too_large),
            (415, provider_not_json),
        ]
        if "twilio" not in path
    },
    **{
        ("POST", path, status): scenario
        for path in SIGNED
        for status, scenario in [(403, twilio_unsigned), (413, twilio_too_large)]
        if "twilio" in path
    },
}


@asynccontextmanager
async def broken(db: Any) -> AsyncIterator[None]:
    for table in APP_TABLES:
        await db.execute(f"ALTER TABLE {table} RENAME TO {table}_gone")
    try:
        yield
    finally:
        for table in APP_TABLES:
            await db.execute(f"ALTER TABLE {table}_gone RENAME TO {table}")


FOREIGN_BRAND = {
    ("POST", C),
    ("GET", S),
    ("PUT", f"{S}/{{recipient}}"),
    ("PUT", T),
    ("GET", R),
    ("PUT", R),
}
"""Naming a brand outside the token is the other 403 (create, suppressions, filter)."""
NO_DATABASE = {("GET", "/healthz"), ("GET", UNSUBSCRIBE)}
"""What answers without the database: every other route answers 503 with it away."""


def tour_pairs(document: dict[str, Any]) -> list[tuple[str, str, int]]:
    """Every documented (operation, status), and what each operation is tried with whether
    or not it is documented (then it must be): its happy path, a 404 for another brand's
    campaign, the other 403, and a 503 without the database."""
    pairs = []
    for op, operation in error_ops(document).items():
        tried = {int(status) for status in operation["responses"]}
        tried |= {HAPPY[op][0]} if op in HAPPY else set()
        tried |= {404} if "{id}" in op[1] else set()
        tried |= {403} if op in FOREIGN_BRAND else set()
        tried |= set() if op in NO_DATABASE else {503}
        pairs += [(*op, status) for status in sorted(tried)]
    return pairs


def collected_document() -> dict[str, Any]:
    """The document as the app builds it, to name the tour's tests when they are collected;
    test_the_tour_tries_every_documented_response compares it with the served one."""
    return tour_app("postgresql://nobody@127.0.0.1/unused").openapi_schema.to_schema()


PAIRS = tour_pairs(collected_document())


@pytest.fixture(scope="module")
async def tour(copies: Copies) -> AsyncIterator[Tour]:
    """One database and app for the whole tour, as when it was one test (a fresh database
    a pair costs more than the tour): each scenario arranges its own campaigns and runs, and
    the ones that take tables or the database away give them back."""
    with fresh_database(copies) as database_url:
        db = await connect(database_url)
        try:
            async with AsyncTestClient(app=tour_app(database_url)) as client:
                document = (await client.get("/schema/openapi.json")).json()
                yield Tour(client, db, document)
        finally:
            await db.close()


async def test_the_tour_tries_every_documented_response(tour):
    assert set(error_ops(tour.document)) == set(HAPPY)
    assert tour_pairs(tour.document) == PAIRS


@pytest.mark.parametrize(
    ("method", "path", "status"), PAIRS, ids=[f"{m} {p} {status}" for m, p, status in PAIRS]
)
async def test_the_route_answers_the_documented_response(tour, method, path, status):
    t, op = tour, (method, path)
    operation = t.document["paths"][path][method.lower()]
    success, make_request = HAPPY[op]
    public = path in PUBLIC or path in SIGNED
    scope = None if public else scope_of(operation)
    specific = SPECIFIC.get((*op, status))
    if status == success:
        request = await make_request(t)
        response = await t.send(op, request)
        t.check(op, success, response, request)
        return
    if specific is not None:
        response = await specific(t, op)
    elif status == 400:
        response = await bad_request(t, op)
    elif status == 401:
        response = await t.send(op, await make_request(t), headers={"Authorization": ""})
    elif status == 403:
        others = [s for s in ALL_SCOPES if s != scope]
        response = await t.send(op, await make_request(t), headers=bearer(scopes=others))
        assert response.json()["details"] == {"required_scope": scope}
        if op in FOREIGN_BRAND:
            t.check(op, 403, response)
            response = await foreign_brand(t, op)
            t.check(op, 403, response)
            assert response.json()["details"] == {"brand_id": "brand-a"}
    elif status == 404:
        response = await not_found(t, op)
    elif status == 412:
        response = await bad_state(t, op)
    elif status == 413:
        response = await too_large(t, op)
    elif status == 415:
        response = await not_json(t, op)
    elif status == 500:
        request = await make_request(t)
        async with broken(t.db):
            response = await t.send(op, request)
    elif status == 503 and op not in NO_DATABASE:
        request = await make_request(t)
        async with database_unreachable(t.db):
            response = await t.send(op, request)
            t.check(op, 503, response)
            if path != "/readyz":
                assert response.headers["Retry-After"] == "1"
        # The pool may not have read yet that its connections were cut: each would answer
        # its next request with a 503 (ADR 0010), and the next pair would get it.
        await t.client.app.state.pool.expire_connections()
    else:
        raise AssertionError(f"no scenario for {op} {status}")
    t.check(op, status, response)
