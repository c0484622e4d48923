"""Checks of path and query parameters on the raw URL, before Litestar's decoded view.

The server decodes `%FF` into U+FFFD, so `/brands/%FF` and `/brands/%FE` would both name
the brand "\ufffd"; msgspec converts `limit=1e2` to 100; and a query parameter given twice
reaches Litestar as a list, which it let through unchecked (`status=x&status=x` listed
every status), and the value `null` as absent (`status=null` listed every status too).
All are refused here with the 400 that names the parameter, like every other bound of a
parameter. Every query parameter of this API is a single value, and none is ever `null`
(a brand literally named "null" cannot be a filter: refused rather than widened). Query
parameters a route does not declare are ignored, as Litestar ignores them, unless they
are not UTF-8: no part of a URL may be.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from litestar.params import QueryParameter
from litestar.types import ASGIApp, Receive, Scope, Send

from app.domain.errors import InvalidInput

INTEGER_QUERY_PARAMETERS = frozenset({"limit"})
"""Query parameters of integer type: decimal digits only."""


def raw_params_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":  # type: ignore[comparison-overlap]
            problems = {**_path_problems(scope), **_query_problems(scope)}
            if problems:
                raise InvalidInput("a parameter of the request is not valid", problems)
        await app(scope, receive, send)

    return middleware


def _path_problems(scope: Scope) -> dict[str, str]:
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    if _is_utf8(raw_path):
        return {}
    # Routed: the template's segments line up with the raw path's (`%2F` stays encoded).
    template = scope.get("path_template", "").split("/")
    return {
        f"path.{name[1:-1].split(':')[0]}": "not valid UTF-8"
        for name, segment in zip(template, raw_path.split(b"/"), strict=False)
        if name.startswith("{") and not _is_utf8(segment)
    } or {"path": "not valid UTF-8"}


def _query_problems(scope: Scope) -> dict[str, str]:
    problems = {}
    declared = _declared_query_parameters(scope)
    seen = set()
    for pair in scope.get("query_string", b"").split(b"&"):
        raw_name, _, raw_value = pair.partition(b"=")
        name = unquote_to_bytes(raw_name.replace(b"+", b" ")).decode("utf-8", "replace")
        if not (_is_utf8(raw_name) and _is_utf8(raw_value)):
            problems[f"query.{name}"] = "not valid UTF-8"
        elif name not in declared:
            continue
        elif name in seen:
            problems[f"query.{name}"] = "given more than once"
        elif unquote_to_bytes(raw_value.replace(b"+", b" ")) == b"null":
            problems[f"query.{name}"] = "null is no value: leave the parameter out"
        elif name in INTEGER_QUERY_PARAMETERS and not unquote_to_bytes(raw_value).isdigit():
            problems[f"query.{name}"] = "must be written in decimal digits"
        seen.add(name)
    return problems


def _declared_query_parameters(scope: Scope) -> set[str]:
    parameters = scope["route_handler"].parsed_fn_signature.parameters
    return {
        field.kwarg_definition.query or name
        for name, field in parameters.items()
        if isinstance(field.kwarg_definition, QueryParameter)
    }


def _is_utf8(raw: bytes) -> bool:
    """Whether the percent-encoded `raw` decodes to UTF-8."""
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
