"""/v1/messaging/unsubscribe/{token}: the one-click unsubscribe link (RFC 8058) that every
e-mail of a campaign with a topic carries. No bearer token, no cookie: the token is the
authority (app/core/unsubscribe.py), checked in microseconds before anything else.

A mailbox provider POSTs `List-Unsubscribe=One-Click` (form-encoded or multipart) for its
user; a person who follows the link GETs a page whose button POSTs the same. Nothing in
the body changes the answer, whatever it is. A GET changes nothing, since mail scanners
fetch every link they see. A bad or expired token is a 404 with no detail: an HTML page for
a browser, the `Error` body for anyone else."""

from __future__ import annotations

from html import escape
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import PathParameter

from app.core.unsubscribe import PATH, Unsubscription
from app.domain.errors import NotFound
from app.http.openapi import DocumentedOperation, error_responses
from app.http.routes.health import PUBLIC
from app.services.suppressions import unsubscribe

MAX_BODY_BYTES = 16 * 1024
"""RFC 8058's body is 26 bytes form-encoded, a few hundred as multipart."""
_HEADERS = {
    # The token is in the URL: no cache, no referrer, no index may keep it.
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
# No bounds: whatever it holds, a token that does not open is a 404, never a 400.
TokenPath = Annotated[
    str, PathParameter(description="The token of the link, as the e-mail carried it.")
]
NOT_FOUND = (
    "No such link (made up, altered, or older than two years): a browser (`Accept: "
    "text/html`) gets a page that says so, anyone else this body."
)
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em}}
button{{font:inherit;padding:.5em 1.5em}}</style></head>
<body><h1>{title}</h1>{content}</body></html>
"""


def _page(status: int, title: str, content: str) -> Response[str]:
    return Response(
        _PAGE.format(title=escape(title), content=content),
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers=_HEADERS,
    )


def _mail_of(found: Unsubscription) -> str:
    topic, brand = escape(found.topic), escape(found.brand_id)
    return f"<strong>{topic}</strong> e-mails from <strong>{brand}</strong>"


def _not_found(request: Request[Any, Any, State]) -> Response[str]:
    if "text/html" in request.headers.get("accept", ""):
        return _page(404, "Link not found", "<p>This unsubscribe link is not valid.</p>")
    raise NotFound("no such unsubscribe link")


def _read(request: Request[Any, Any, State], token: str) -> Unsubscription | None:
    keys = request.app.state.unsubscribe_keys
    return None if keys is None else keys.read(token)


_DOCS: dict[str, Any] = {
    "tags": ["unsubscribe"],
    "security": PUBLIC,
    "media_type": "text/html",
    "operation_class": DocumentedOperation,
}


@get(
    f"{PATH}/{{token:str}}",
    operation_id="unsubscribePage",
    response_description="A page naming the brand and the topic, with a button that POSTs.",
    responses=error_responses(404, s404=NOT_FOUND),
    **_DOCS,
)
async def unsubscribe_page(request: Request[Any, Any, State], token: TokenPath) -> Response[str]:
    """The page of an unsubscribe link: who would stop sending what, and a button that
    unsubscribes (a POST). Opening it changes nothing: mail scanners open every link."""
    found = _read(request, token)
    if found is None:
        return _not_found(request)
    form = (
        f"<p>Stop receiving {_mail_of(found)}?</p>"
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return _page(200, "Unsubscribe", form)


@post(
    f"{PATH}/{{token:str}}",
    status_code=200,
    operation_id="unsubscribe",
    request_max_body_size=MAX_BODY_BYTES,
    response_description="Unsubscribed (or already): a page that says so. Never a redirect.",
    responses=error_responses(
        404,
        413,
        500,
        503,
        s404=NOT_FOUND,
        s413=f"The body is larger than {MAX_BODY_BYTES // 1024} KiB.",
    ),
    **_DOCS,
)
async def unsubscribe_one_click(
    request: Request[Any, Any, State], token: TokenPath
) -> Response[str]:
    """One-click unsubscribe (RFC 8058): the link's address is suppressed for its brand and
    topic (reason `unsubscribed`), which every delivery of that topic not yet sent then
    honours; a `suppression.created` event goes to EVENTS_WEBHOOK_URL. Campaigns of other
    topics and service mail still reach the address. Idempotent. The body, if any
    (`List-Unsubscribe=One-Click`, form-encoded or multipart), changes nothing."""
    await request.body()  # only so that a body over MAX_BODY_BYTES is a 413
    found = _read(request, token)
    if found is None:
        return _not_found(request)
    state = request.app.state
    # A connection only for a token that opened: junk costs no database work.
    async with state.pool.acquire(timeout=state.settings.db_pool_timeout_seconds) as conn:
        await unsubscribe(conn, found)
    return _page(200, "Unsubscribed", f"<p>You will no longer receive {_mail_of(found)}.</p>")
