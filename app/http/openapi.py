"""What the OpenAPI document says about access and errors, declared once per route.

Litestar derives paths, parameters, bodies and success responses from the handlers.
`access()` adds the rest of an operation: the guard of the scope a route needs and that
scope in the document, and every error status the route can answer, each with the
`Error` body and its code (the code the error handlers send: `code_for`). What spans
operations is app/http/openapi_document.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    Example,
    OpenAPIHeader,
    Operation,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.types import Guard

from app.domain.schemas import Error
from app.http.auth import BEARER_SCHEME, requires
from app.http.error_handlers import code_for

# status -> when it happens (its code: app/http/error_handlers.py `code_for`)
ERRORS: dict[int, str] = {
    400: "The request is not valid; `details` names each offending part.",
    401: "The bearer token is missing, malformed, expired or wrongly signed.",
    403: "The token lacks the scope, or may not act for the brand named.",
    404: "No such resource among the brands of the token.",
    409: "A request with this Idempotency-Key is still being processed; retry after "
    "`Retry-After` seconds.",
    410: "The run's deliveries were removed: it ended more than DELIVERY_RETENTION_DAYS ago. "
    "The run and its counters remain.",
    412: "The campaign is not in a state that allows this.",
    413: "The request body is larger than the service accepts.",
    415: "The body is not JSON.",
    422: "This Idempotency-Key was already used with a different request body.",
    500: "The service failed; `details.request_id` identifies the failure.",
    503: "The database cannot be reached, or every connection stayed busy for "
    "DB_POOL_TIMEOUT_SECONDS; nothing was changed. Retry after `Retry-After` seconds.",
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


class RouteDocs(TypedDict):
    """Route keyword arguments: who may call it (guard, security) and its error answers."""

    guards: list[Guard]
    security: list[dict[str, list[str]]]
    responses: dict[int, ResponseSpec]
    operation_class: type[Operation]


def error_responses(*statuses: int, **overrides: str) -> dict[int, ResponseSpec]:
    """An `Error`-bodied response for each status; `overrides` ("s401": when) replace a
    status's line of ERRORS."""
    responses = {}
    for status in statuses:
        code, when = code_for(status), overrides.get(f"s{status}", ERRORS[status])
        responses[status] = ResponseSpec(
            data_container=Error,
            description=when,
            generate_examples=False,
            examples=[Example(summary=code, value={"error": code, "message": when})],
        )
    return responses


def signed(scheme: str, guard: Guard, *statuses: int, refused: int = 401) -> RouteDocs:
    """Route keyword arguments of a route that a signature authenticates instead of a token:
    the `guard` that checks it, the security `scheme` (SECURITY_SCHEMES) in the document,
    and the error `statuses` (besides `refused` and 500). `refused` is the status of a
    request not signed: 401, or 403 where the provider's convention says so (Twilio)."""
    what = "body" if refused == 401 else "request"
    return RouteDocs(
        guards=[guard],
        security=[{scheme: []}],
        responses=error_responses(
            *sorted({*statuses, refused, 500}),
            **{f"s{refused}": f"The signature is missing or does not match the {what}."},
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


def access(scope: str, *statuses: int, **overrides: str) -> RouteDocs:
    """Route keyword arguments: `scope` is required (guard and document), and the route
    can answer the error `statuses` (besides 401, 403, 500 and 503, which every route can);
    `overrides` as error_responses takes them."""
    return RouteDocs(
        guards=[requires(scope)],
        security=[{BEARER_SCHEME: [scope]}],
        responses=error_responses(*sorted({*statuses, *_ALWAYS}), **overrides),
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
