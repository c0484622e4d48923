"""The OpenAPI document against the running routes.

The tour below makes every route answer every status its operation documents, and only
those: a status documented without a scenario, or a scenario of an undocumented status,
fails. Each real response is validated against the documented schema (strictly: an
undocumented field fails too), its documented headers must be there, and the bodies the
happy paths send must match the documented request body.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import jsonschema
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from app.idempotency import lock_id
from tests.helpers import CAMPAIGNS, create_campaign, database_unreachable, recipients
from tests.tokens import ALL_SCOPES, bearer

BRANDS = "/v1/messaging/brands"
MAX_BODY = 64 * 1024  # small, so that 413 needs no huge body
APP_TABLES = ("campaigns", "runs", "deliveries", "suppressions", "idempotency_keys")

Op = tuple[str, str]  # (method, path as documented)
Request = dict[str, Any]  # keyword arguments of client.request besides the method


@pytest.fixture
async def tour_client(settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(replace(settings, publish_max_body_bytes=MAX_BODY))
    async with AsyncTestClient(app=app) as client:
        yield client


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
        public = path in ("/healthz", "/readyz")
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
    checked: set[tuple[str, str, int]] = field(default_factory=set)

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
        else:
            assert response.headers["content-type"].startswith("application/json")
            (media,) = content.values()
            validate(self.document, media["schema"], response.json(), (op, status))
        if request is not None and "json" in request and "requestBody" in operation:
            (media,) = operation["requestBody"]["content"].values()
            validate(self.document, media["schema"], request["json"], (op, "request body"))
        self.checked.add((method, path, status))


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


async def put_suppression_req(t: Tour) -> Request:
    url = f"{BRANDS}/brand-a/suppressions/new@example.com"
    return {"url": url, "json": {"reason": "bounced"}, "headers": bearer()}


async def delete_suppression_req(t: Tour) -> Request:
    return {"url": f"{BRANDS}/brand-a/suppressions/{await t.suppression()}", "headers": bearer()}


async def healthz_req(t: Tour) -> Request:
    return {"url": "/healthz"}


async def readyz_req(t: Tour) -> Request:
    return {"url": "/readyz"}


C = CAMPAIGNS
S = f"{BRANDS}/{{brand_id}}/suppressions"
HAPPY: dict[Op, tuple[int, Callable[[Tour], Awaitable[Request]]]] = {
    ("POST", C): (201, create_req),
    ("GET", C): (200, list_req),
    ("GET", f"{C}/{{id}}"): (200, read_req),
    ("PATCH", f"{C}/{{id}}"): (200, patch_req),
    ("POST", f"{C}/{{id}}/activate"): (200, activate_req),
    ("POST", f"{C}/{{id}}/archive"): (200, archive_req),
    ("POST", f"{C}/{{id}}/publish"): (202, publish_req),
    ("GET", f"{C}/{{id}}/runs"): (200, runs_req),
    ("GET", f"{C}/{{id}}/runs/{{run_id}}"): (200, run_req),
    ("GET", f"{C}/{{id}}/runs/{{run_id}}/deliveries"): (200, deliveries_req),
    ("POST", f"{C}/{{id}}/runs/{{run_id}}/cancel"): (200, cancel_req),
    ("GET", S): (200, suppressions_req),
    ("GET", f"{S}/{{recipient}}"): (200, suppression_req),
    ("PUT", f"{S}/{{recipient}}"): (200, put_suppression_req),
    ("DELETE", f"{S}/{{recipient}}"): (204, delete_suppression_req),
    ("GET", "/healthz"): (200, healthz_req),
    ("GET", "/readyz"): (200, readyz_req),
}


def with_url(request: Request, url: str) -> Request:
    return {**request, "url": url}


async def not_found(t: Tour, op: Op) -> Any:
    """The resource in the path belongs to another brand."""
    _, path = op
    request = await HAPPY[op][1](t)
    if path.startswith(S):
        return await t.send(op, with_url(request, request["url"].replace("@", "-gone@")))
    theirs = await t.campaign(brand="brand-b")
    url = request["url"].split("/")
    url[4] = theirs["id"]  # /v1/messaging/campaigns/{id}/...
    return await t.send(op, with_url(request, "/".join(url)))


async def bad_request(t: Tour, op: Op) -> Any:
    method, path = op
    request = await HAPPY[op][1](t)
    if path.endswith("{recipient}"):
        return await t.send(op, with_url(request, f"{BRANDS}/brand-a/suppressions/nobody"))
    if method == "GET" and path.endswith(("/campaigns", "/runs", "/deliveries", "/suppressions")):
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
    return await t.send(op, {**request, "json": {"padding": "x" * MAX_BODY}})


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


async def foreign_brand(t: Tour, op: Op) -> Any:
    request = await HAPPY[op][1](t)
    return await t.send(op, request, headers=bearer(brands=["brand-b"]))


SPECIFIC: dict[tuple[str, str, int], Callable[[Tour, Op], Awaitable[Any]]] = {
    ("POST", f"{C}/{{id}}/publish", 409): publish_in_flight,
    ("POST", f"{C}/{{id}}/publish", 422): publish_key_reused,
    ("POST", f"{C}/{{id}}/runs/{{run_id}}/cancel", 412): cancel_twice,
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


async def test_every_documented_response_is_what_the_route_answers(tour_client, db):
    client = tour_client
    document = (await client.get("/schema/openapi.json")).json()
    t = Tour(client, db, document)
    operations = error_ops(document)
    assert set(operations) == set(HAPPY)

    for op, operation in operations.items():
        documented = {int(status) for status in operation["responses"]}
        success, make_request = HAPPY[op]
        request = await make_request(t)
        t.check(op, success, await t.send(op, request), request)
        scope = None if op[1] in ("/healthz", "/readyz") else scope_of(operation)

        # Every route that takes a campaign id answers 404 for another brand's: that
        # is tried whether or not it is documented, and then must be.
        tried = documented | ({404} if "{id}" in op[1] else set())
        for status in sorted(tried - {success}):
            specific = SPECIFIC.get((*op, status))
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
                async with broken(db):
                    response = await t.send(op, request)
            elif status == 503:
                continue  # below: it takes the database away for good
            else:
                raise AssertionError(f"no scenario for {op} {status}")
            t.check(op, status, response)

    # Naming a brand outside the token is the other 403 (create, suppressions, filter).
    for op in [("POST", C), ("GET", S), ("PUT", f"{S}/{{recipient}}")]:
        response = await foreign_brand(t, op)
        t.check(op, 403, response)
        assert response.json()["details"] == {"brand_id": "brand-a"}

    async with database_unreachable(db):
        t.check(("GET", "/readyz"), 503, await client.get("/readyz"))

    every_documented = {
        (method, path, int(status))
        for (method, path), operation in operations.items()
        for status in operation["responses"]
    }
    assert t.checked == every_documented
