"""What the OpenAPI document says about access and errors, declared once per route, and
what it says about the whole API, added once the document is built.

Litestar derives paths, parameters, bodies and success responses from the handlers.
`access()` adds the rest of an operation: the guard of the scope a route needs and that
scope in the document, and every error status the route can answer, each with the
`Error` body. `complete_document()` adds what spans operations: links from a campaign or
a run to the operations on it, the `X-Request-ID` of every response, and the limits that
come from settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, TypedDict

import msgspec
from litestar import Request, Router
from litestar.exceptions import NotFoundException
from litestar.openapi import ResponseSpec
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    OpenAPIRenderPlugin,
    RapidocRenderPlugin,
    RedocRenderPlugin,
    StoplightRenderPlugin,
    SwaggerRenderPlugin,
)
from litestar.openapi.spec import (
    Example,
    Link,
    OpenAPI,
    OpenAPIHeader,
    Operation,
    Parameter,
    PathItem,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.types import ASGIApp, Guard, Receive, Scope, Send

from app.domain import schemas
from app.domain.schemas import Error
from app.http.auth import BEARER_SCHEME, requires

# status -> (error code, when it happens)
ERRORS: dict[int, tuple[str, str]] = {
    400: ("validation_error", "The request is not valid; `details` names each offending part."),
    401: ("unauthorized", "The bearer token is missing, malformed, expired or wrongly signed."),
    403: ("forbidden", "The token lacks the scope, or may not act for the brand named."),
    404: ("not_found", "No such resource among the brands of the token."),
    409: (
        "idempotency_request_in_progress",
        "A request with this Idempotency-Key is still being processed; retry after "
        "`Retry-After` seconds.",
    ),
    410: (
        "gone",
        "The run's deliveries were removed: it ended more than DELIVERY_RETENTION_DAYS ago. "
        "The run and its counters remain.",
    ),
    412: ("bad_state", "The campaign is not in a state that allows this."),
    413: ("payload_too_large", "The request body is larger than the service accepts."),
    415: ("unsupported_media_type", "The body is not JSON."),
    422: (
        "idempotency_key_reused",
        "This Idempotency-Key was already used with a different request body.",
    ),
    500: ("internal_error", "The service failed; `details.request_id` identifies the failure."),
    503: (
        "unavailable",
        "The database cannot be reached, or every connection stayed busy for "
        "DB_POOL_TIMEOUT_SECONDS; nothing was changed. Retry after `Retry-After` seconds.",
    ),
}

_ALWAYS = (401, 403, 500, 503)  # every route behind a bearer token

_HEADERS: dict[str, dict[str, OpenAPIHeader]] = {
    "202": {  # every 202 of this API is a queued run
        "Location": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.URI_REFERENCE),
            required=True,
            description="Path of the run: `/v1/messaging/campaigns/{id}/runs/{run_id}`.",
        )
    },
    "401": {
        "WWW-Authenticate": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.STRING), description="`Bearer`"
        )
    },
    "409": {
        "Retry-After": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.INTEGER), description="Seconds to wait."
        )
    },
    "503": {
        "Retry-After": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.INTEGER), description="Seconds to wait."
        )
    },
}

REQUEST_ID = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.STRING),
    required=True,
    description="The request's id: the caller's `X-Request-ID` if it sent one of 1 to 128 "
    "characters `A-Za-z0-9._:-`, else a new one. Every log line of the request has it; "
    "quote it when reporting a failure.",
)


class Access(TypedDict):
    guards: list[Guard]
    security: list[dict[str, list[str]]]
    responses: dict[int, ResponseSpec]
    operation_class: type[Operation]


def error_responses(*statuses: int, **overrides: tuple[str, str]) -> dict[int, ResponseSpec]:
    """An `Error`-bodied response for each status; `overrides` ("s401": (code, when))
    replace a status's line of ERRORS."""
    responses = {}
    for status in statuses:
        code, when = overrides.get(f"s{status}", ERRORS[status])
        responses[status] = ResponseSpec(
            data_container=Error,
            description=when,
            generate_examples=False,
            examples=[Example(summary=code, value={"error": code, "message": when})],
        )
    return responses


class Signed(TypedDict):
    guards: list[Guard]
    security: list[dict[str, list[str]]]
    responses: dict[int, ResponseSpec]
    operation_class: type[Operation]


def signed(scheme: str, guard: Guard, *statuses: int, refused: int = 401) -> Signed:
    """Route keyword arguments of a route that a signature authenticates instead of a token:
    the `guard` that checks it, the security `scheme` (SECURITY_SCHEMES) in the document,
    and the error `statuses` (besides `refused` and 500). `refused` is the status of a
    request not signed: 401, or 403 where the provider's convention says so (Twilio)."""
    code, what = ("unauthorized", "body") if refused == 401 else ("forbidden", "request")
    return Signed(
        guards=[guard],
        security=[{scheme: []}],
        responses=error_responses(
            *sorted({*statuses, refused, 500}),
            **{f"s{refused}": (code, f"The signature is missing or does not match the {what}.")},
        ),
        operation_class=DocumentedOperation,
    )


SECURITY_SCHEMES = {
    "WebhookSignature": SecurityScheme(
        type="apiKey",
        name="X-Signature",
        security_scheme_in="header",
        description="`sha256=<hex HMAC-SHA256 of the raw body with WEBHOOK_SECRET>`.",
    ),
    "SendGridSignature": SecurityScheme(
        type="apiKey",
        name="X-Twilio-Email-Event-Webhook-Signature",
        security_scheme_in="header",
        description="SendGrid's signed Event Webhook: ECDSA (P-256, SHA-256) over "
        "`X-Twilio-Email-Event-Webhook-Timestamp` + the raw body, verified with "
        "SENDGRID_WEBHOOK_PUBLIC_KEY.",
    ),
    "TwilioSignature": SecurityScheme(
        type="apiKey",
        name="X-Twilio-Signature",
        security_scheme_in="header",
        description="Twilio's request signature: base64 of HMAC-SHA1 with TWILIO_AUTH_TOKEN "
        "over PUBLIC_BASE_URL + the path and query, followed by the form fields' names and "
        "values sorted by name.",
    ),
}
"""Security schemes of the routes that providers call (besides the BearerToken)."""


def access(scope: str, *statuses: int) -> Access:
    """Route keyword arguments: `scope` is required (guard and document), and the route
    can answer the error `statuses` (besides 401, 403, 500 and 503, which every route can)."""
    return Access(
        guards=[requires(scope)],
        security=[{BEARER_SCHEME: [scope]}],
        responses=error_responses(*sorted({*statuses, *_ALWAYS})),
        operation_class=DocumentedOperation,
    )


@dataclass
class DocumentedOperation(Operation):
    """The parts of an operation that Litestar does not derive from a handler."""

    def __post_init__(self) -> None:
        scopes = [scope for req in self.security or [] for scope in req.get(BEARER_SCHEME, [])]
        if scopes:
            needs = f"Requires a bearer token with the `{'`, `'.join(scopes)}` scope."
            self.description = f"{self.description}\n\n{needs}" if self.description else needs
        responses = self.responses or {}
        for status in list(responses):
            response = responses[status]
            if status.startswith(("4", "5")) and not _is_error_body(response):
                # Litestar's default validation response: our handlers never send its
                # shape (app/http/error_handlers.py rewrites it), so it must not be documented.
                del responses[status]
            elif status == "401" and not scopes:
                continue  # a signature is not a bearer token: no WWW-Authenticate
            elif status in _HEADERS and not isinstance(response, Reference):
                response.headers = {**(response.headers or {}), **_HEADERS[status]}


def _is_error_body(response: Any) -> bool:
    """Ours reference the `Error` component (its final name is set after the operations
    are built); Litestar's defaults inline a schema of their own."""
    content = getattr(response, "content", None) or {}
    return bool(content) and all(isinstance(m.schema, Reference) for m in content.values())


# Links: a response holding a campaign or a run leads to the operations on it, matched by
# path, so that an operation added under `/campaigns/{id}` or `/runs/{run_id}` (say
# `POST .../runs/{run_id}/retry`) is linked without a line here.
CAMPAIGN_PATH = "/v1/messaging/campaigns/{id}"
RUN_PATH = f"{CAMPAIGN_PATH}/runs/{{run_id}}"
LINKED: dict[str, tuple[str, dict[str, str]]] = {
    # response schema: (path of the operations it leads to, their parameters from it)
    "Campaign": (CAMPAIGN_PATH, {"id": "$response.body#/id"}),
    "Run": (RUN_PATH, {"id": "$response.body#/campaign_id", "run_id": "$response.body#/id"}),
}
_METHODS = ("get", "put", "post", "patch", "delete")


def complete_document(openapi: OpenAPI, *, max_recipients: int) -> None:
    """Adds to the built document what no single handler declares."""
    operations = [
        (path, operation)
        for path, item in (openapi.paths or {}).items()
        for method in _METHODS
        if isinstance(item, PathItem) and (operation := getattr(item, method)) is not None
    ]
    components = (openapi.components.schemas or {}) if openapi.components else {}
    _add_request_ids_and_links(operations)
    _simplify(operations, components)
    _state_limits(components, max_recipients=max_recipients)


def _add_request_ids_and_links(operations: list[tuple[str, Operation]]) -> None:
    for _, operation in operations:
        for status, response in (operation.responses or {}).items():
            if isinstance(response, Reference):
                continue
            response.headers = {**(response.headers or {}), "X-Request-ID": REQUEST_ID}
            target = _linked_schema(response) if status.startswith("2") else None
            if target is not None:
                response.links = _links(target, operations, exclude=operation)


def _simplify(operations: list[tuple[str, Operation]], components: dict[str, Schema]) -> None:
    for _, operation in operations:
        for parameter in operation.parameters or []:
            if isinstance(parameter, Parameter) and isinstance(parameter.schema, Schema):
                # Optional in a query or a header means absent, never `null`.
                parameter.schema = _simplified(parameter.schema, drop_null=True)
    for schema in components.values():
        properties = schema.properties or {}
        for name, field in properties.items():
            if isinstance(field, Schema):
                properties[name] = _simplified(field, drop_null=False)


def _state_limits(components: dict[str, Schema], *, max_recipients: int) -> None:
    """Limits that come from settings, or from Struct options Litestar does not render."""
    recipients = (components["PublishRequest"].properties or {})["recipients"]
    if isinstance(recipients, Schema):
        recipients.min_items, recipients.max_items = 1, max_recipients
    for name, struct in vars(schemas).items():
        closed = isinstance(struct, type) and issubclass(struct, msgspec.Struct)
        if closed and struct.__struct_config__.forbid_unknown_fields and name in components:
            components[name].additional_properties = False


def _simplified(schema: Schema, *, drop_null: bool) -> Schema:
    """`schema` without a `oneOf` of one member (Litestar's rendering of `T | UNSET`),
    and without its `null` alternative if `drop_null`."""
    null = OpenAPIType.NULL
    if isinstance(schema.type, list) and drop_null and null in schema.type:
        (kind,) = [t for t in schema.type if t != null]
        enum = [v for v in schema.enum or [] if v is not None] or None
        return replace(schema, type=kind, enum=enum)
    members = [
        m
        for m in schema.one_of or []
        if not (drop_null and isinstance(m, Schema) and m.type == null)
    ]
    member = members[0] if len(members) == 1 else None
    if not isinstance(member, Schema):
        return schema
    return replace(
        schema,
        one_of=None,
        type=member.type,
        enum=member.enum or schema.enum,
        format=member.format or schema.format,
    )


def _linked_schema(response: Any) -> str | None:
    for media in (getattr(response, "content", None) or {}).values():
        if isinstance(media.schema, Reference):
            name = media.schema.ref.rsplit("/", 1)[-1]
            if name in LINKED:
                return name
    return None


def _links(
    schema: str, operations: list[tuple[str, Operation]], *, exclude: Operation
) -> dict[str, Link | Reference]:
    """Links to the operations at or below the schema's path that take exactly the
    parameters the link gives (so a campaign does not lead to a run's operations)."""
    prefix, parameters = LINKED[schema]
    return {
        operation.operation_id: Link(operation_id=operation.operation_id, parameters=parameters)
        for path, operation in operations
        if operation is not exclude
        and operation.operation_id
        and (path == prefix or path.startswith(f"{prefix}/"))
        and set(re.findall(r"\{(\w+)\}", path)) == set(parameters)
    }


# The documents at /schema, for anyone (no token).


class _RenderedOnce(OpenAPIRenderPlugin):
    """A page of /schema rendered at its first request and kept. The document is fixed
    once the app has started, and Litestar renders on every request, on the event loop
    that all other requests wait for: an anonymous caller could make it busy at will."""

    _page: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._page is None:
            # The concrete plugin's render: the next class in the subclass's MRO.
            self._page = super().render(request, openapi_schema)  # type: ignore[safe-super]
        return self._page


class _Json(_RenderedOnce, JsonRenderPlugin):
    pass


class _Redoc(_RenderedOnce, RedocRenderPlugin):
    pass


class _Swagger(_RenderedOnce, SwaggerRenderPlugin):
    pass


class _Elements(_RenderedOnce, StoplightRenderPlugin):
    pass


class _Rapidoc(_RenderedOnce, RapidocRenderPlugin):
    pass


def schema_pages() -> list[OpenAPIRenderPlugin]:
    """What /schema serves: the document as JSON (`/schema/openapi.json`), and the
    browsable docs that Litestar offers (Redoc at `/schema`). Not YAML: Litestar renders
    it with pure-Python `yaml.dump`, ~110 ms of event loop per request; the JSON is the
    same document."""
    return [_Json(), _Redoc(path=["/", "/redoc"]), _Swagger(), _Elements(), _Rapidoc()]


def schema_router() -> Router:
    """The router of /schema, whose unknown paths answer the `Error` body like every
    other route (Litestar's own catch-all answers an HTML page)."""
    return Router("/schema", route_handlers=[], include_in_schema=False, middleware=[_unknown_page])


def _unknown_page(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        # Litestar's catch-all for unknown pages is the one route of /schema with a path
        # parameter ("/schema/{path}"); the pages themselves have none.
        if "path" in scope.get("path_params", {}):
            raise NotFoundException("no such page of the API's documentation")
        await app(scope, receive, send)

    return middleware
