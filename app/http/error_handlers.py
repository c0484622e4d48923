"""The one place where errors become HTTP responses, all with the `Error` body."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_410_GONE,
    HTTP_412_PRECONDITION_FAILED,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from app.domain.decoding import without_value
from app.domain.errors import (
    BadState,
    DataErased,
    ForbiddenBrand,
    Gone,
    IdempotencyKeyReused,
    InvalidCursor,
    InvalidInput,
    NotFound,
    NotSigned,
    RequestInProgress,
    ServiceError,
    Unauthenticated,
    UnsupportedMediaType,
)
from app.domain.schemas import Error
from app.http.request_id import request_id_of
from db.pool import DATABASE_AWAY

logger = logging.getLogger(__name__)

STATUS_OF: dict[type[ServiceError], int] = {
    InvalidInput: HTTP_400_BAD_REQUEST,
    Unauthenticated: HTTP_401_UNAUTHORIZED,
    ForbiddenBrand: HTTP_403_FORBIDDEN,
    NotSigned: HTTP_403_FORBIDDEN,
    NotFound: HTTP_404_NOT_FOUND,
    Gone: HTTP_410_GONE,
    BadState: HTTP_412_PRECONDITION_FAILED,
    DataErased: HTTP_412_PRECONDITION_FAILED,
    UnsupportedMediaType: HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    InvalidCursor: HTTP_400_BAD_REQUEST,
    IdempotencyKeyReused: HTTP_422_UNPROCESSABLE_ENTITY,
    RequestInProgress: HTTP_409_CONFLICT,
}

# Stable codes for the framework's own errors, by status.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def code_for(status: int) -> str:
    """The code of the errors answered with `status`: the first domain error mapped to it,
    else the framework's (what the OpenAPI document shows in its examples)."""
    mapped = (error.code for error, mapped in STATUS_OF.items() if mapped == status)
    return next(mapped, None) or HTTP_CODES[status]


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Error]:
    return Response(
        Error(error=code, message=message, details=details or {}),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def handle_service_error(_: Request[Any, Any, Any], exc: ServiceError) -> Response[Error]:
    headers = None
    if isinstance(exc, RequestInProgress):
        headers = {"Retry-After": str(exc.retry_after)}
    return error_response(
        STATUS_OF.get(type(exc), 400), exc.code, exc.message, exc.details, headers
    )


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Error]:
    status = exc.status_code
    if status >= 500:
        return handle_unexpected(request, exc)
    headers = dict(exc.headers or {})
    details: dict[str, Any] = {}
    if isinstance(exc, NotAuthorizedException):
        headers.setdefault("WWW-Authenticate", "Bearer")
        message = "a valid bearer token is required"
        if exc.detail and exc.detail != "Unauthorized":
            message = f"{message}: {exc.detail}"
    elif isinstance(exc, PermissionDeniedException) and isinstance(exc.extra, dict):
        details = dict(exc.extra)
        message = exc.detail
    elif isinstance(exc, ValidationException):
        return _validation_response(exc)
    elif status == 400:
        # Litestar's other 400: a body it could not decode (malformed JSON), named like
        # publish names it (app/http/body.py).
        return error_response(
            400, "validation_error", "the request body is not valid JSON", {"$": exc.detail}
        )
    elif status in (404, 405):
        # Not the path: it may hold an address (.../suppressions/{recipient}).
        template = request.scope.get("path_template")
        message = f"{exc.detail}: {request.method}" + (f" {template}" if template else "")
    else:
        message = exc.detail
    return error_response(status, HTTP_CODES.get(status, "error"), message, details, headers)


def _validation_response(exc: ValidationException) -> Response[Error]:
    details: dict[str, str] = {}
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict) and "message" in item:
            message = without_value(str(item["message"]))
            if item.get("key") == "data" and message == "'data'":
                message = "a JSON body is required"  # Litestar's words for an empty body
            details[_where(item)] = message
    if not details:
        # Malformed JSON and the like: Litestar's detail names the problem.
        details = {"$": exc.detail}
    return error_response(400, "validation_error", "the request is not valid", details)


def _where(item: dict[str, Any]) -> str:
    """A JSON path in the body ("$.name"), or the parameter ("query.limit")."""
    key, source = str(item.get("key") or ""), item.get("source")
    source = getattr(source, "value", source)  # Litestar's ParamType, or a plain string
    if source in ("query", "path", "header", "cookie"):
        return f"{source}.{key}"
    if key in ("", "data"):  # the body as a whole
        return "$"
    return key if key.startswith("$") else f"$.{key}"


def route_of(request: Request[Any, Any, Any]) -> str:
    """The route template of the request (`/v1/messaging/brands/{brand_id}/suppressions/
    {recipient}`), never its path, which may hold an address; `unmatched` without one."""
    template: str = request.scope.get("path_template") or "unmatched"
    return template


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Error]:
    request_id = request_id_of(request.scope)
    logger.exception(
        "unhandled error on %s %s (request id %s)", request.method, route_of(request), request_id
    )
    return error_response(
        HTTP_500_INTERNAL_SERVER_ERROR,
        HTTP_CODES[500],
        "the server failed to handle this request; quote the request id when reporting it",
        {"request_id": request_id},
    )


RETRY_AFTER_SECONDS = 1


def handle_database_away(_: Request[Any, Any, Any], exc: Exception) -> Response[Error]:
    # The database restarting, a cut connection, every pooled connection busy for longer
    # than DB_POOL_TIMEOUT_SECONDS: nothing was written (each write is one transaction),
    # and the same request may well succeed a moment later.
    logger.warning("database unavailable: %r", exc)
    return error_response(
        HTTP_503_SERVICE_UNAVAILABLE,
        HTTP_CODES[503],
        "the service is unavailable or busy (its database, or a service it needs); nothing"
        " was changed, retry after Retry-After",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def handle_unstorable_text(_: Request[Any, Any, Any], exc: Exception) -> Response[Error]:
    # PostgreSQL refuses NUL characters and invalid UTF-8 in text. Checking every string of
    # a 100,000-recipient body up front would cost the publish path; the database's refusal
    # (which rolls the transaction back) is turned into the 400 it is instead.
    return error_response(
        HTTP_400_BAD_REQUEST,
        "validation_error",
        "a text value holds a character that cannot be stored (NUL, invalid UTF-8 or a lone"
        " surrogate)",
        {"$": "NUL characters, invalid UTF-8 and lone surrogates are not accepted in any text"},
    )


def handle_unencodable_argument(request: Request[Any, Any, Any], exc: Exception) -> Response[Error]:
    # asyncpg could not encode a parameter: a lone UTF-16 surrogate (a JSON "\ud800", as
    # a token's `sub` may carry) has no UTF-8. Any other such error is ours: a 500.
    if isinstance(exc.__cause__, UnicodeError):
        return handle_unstorable_text(request, exc)
    return handle_unexpected(request, exc)


EXCEPTION_HANDLERS = {
    ServiceError: handle_service_error,
    HTTPException: handle_http_exception,
    asyncpg.CharacterNotInRepertoireError: handle_unstorable_text,
    asyncpg.UntranslatableCharacterError: handle_unstorable_text,
    UnicodeError: handle_unstorable_text,  # invalid UTF-8 inside a JSON string
    asyncpg.DataError: handle_unencodable_argument,  # its subclasses above keep their own
    **dict.fromkeys(DATABASE_AWAY, handle_database_away),
    Exception: handle_unexpected,
}
