"""What the OpenAPI document says about the whole API, added once it is built (links from a
campaign or a run to the operations on it, the `X-Request-ID` of every response, limits
from the settings), and how its pages are served: rendered once, JSON only.
The per-route declarations are app/http/openapi.py's."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import msgspec
from litestar import Request, Router
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    OpenAPIRenderPlugin,
    RapidocRenderPlugin,
    RedocRenderPlugin,
    StoplightRenderPlugin,
    SwaggerRenderPlugin,
)
from litestar.openapi.spec import (
    Link,
    OpenAPI,
    OpenAPIHeader,
    Operation,
    Parameter,
    PathItem,
    Reference,
    Schema,
)
from litestar.openapi.spec.enums import OpenAPIType
from litestar.types import ASGIApp, Receive, Scope, Send

from app.domain import schemas

REQUEST_ID = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.STRING),
    required=True,
    description="The request's id: the caller's `X-Request-ID` if it sent one of 1 to 128 "
    "characters `A-Za-z0-9._:-`, else a new one. Every log line of the request has it; "
    "quote it when reporting a failure.",
)


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
    # A recipient's `data` is decoded as raw JSON text, a type Litestar shows as anything.
    (components["Recipient"].properties or {})["data"] = Schema(
        type=OpenAPIType.OBJECT,
        description="The recipient's variables, `data.<name>` in the campaign's templates: "
        "a JSON object of at most PUBLISH_MAX_DATA_BYTES (default 4096) bytes. Patient data: "
        "never returned, erased DELIVERY_DATA_DAYS after the run ended.",
    )
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
