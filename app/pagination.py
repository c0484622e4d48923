"""Keyset pagination with opaque, signed cursors.

A cursor is the sort key of the last row of a page, msgpack-encoded, behind an HMAC that
also covers the listing it was issued for (which list, whose campaign or run, which
filters, and the brands of the token it was issued to: `listing_of`). A cursor that was
altered, made up, or issued for another listing or another brand scope fails the check
and is a 400 `invalid_cursor`. The MAC is not what keeps brands apart: every page
query applies the caller's brands again, so a cursor only ever says where to resume.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from app.errors import InvalidCursor

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_MAC_BYTES = 16


def cursor_key(secret: str) -> bytes:
    """The HMAC key of cursors, derived so that it is never the secret itself."""
    return hmac.new(secret.encode(), b"messaging pagination cursor", hashlib.sha256).digest()


def listing_of(brands: Sequence[str], *parts: Any) -> tuple[Any, ...]:
    """What a cursor is bound to: the listing's `parts` and the caller's brand scope (the
    token's `brands` as a set, `*` included as it is)."""
    return (*parts, sorted(set(brands)))


def _mac(key: bytes, listing: Sequence[Any], payload: bytes) -> bytes:
    message = msgspec.msgpack.encode(list(listing)) + payload
    return hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES]


def encode_cursor(key: bytes, listing: Sequence[Any], position: Sequence[Any]) -> str:
    """The cursor that resumes `listing` after the row whose sort key is `position`."""
    payload = msgspec.msgpack.encode(list(position))
    token = _mac(key, listing, payload) + payload
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")


def decode_cursor(key: bytes, listing: Sequence[Any], cursor: str, type_: type[T]) -> T:
    """The position in `cursor`, typed as `type_`; InvalidCursor unless this service
    issued it for this very `listing`."""
    invalid = InvalidCursor(
        "the cursor is not one this listing issued; start again without a cursor",
        {"query.cursor": "invalid"},
    )
    try:
        token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise invalid from None
    mac, payload = token[:_MAC_BYTES], token[_MAC_BYTES:]
    if not payload or not hmac.compare_digest(mac, _mac(key, listing, payload)):
        raise invalid
    try:
        return msgspec.msgpack.decode(payload, type=type_)
    except msgspec.DecodeError:
        # Signed by us but not of this shape: a cursor of an older release.
        raise invalid from None


def split_page(
    rows: Sequence[R],
    limit: int,
    key: bytes,
    listing: Sequence[Any],
    position: Callable[[R], Sequence[Any]],
) -> tuple[Sequence[R], str | None]:
    """The page and the cursor of the next one, from the `limit + 1` rows a page query
    fetched: the extra row only tells that there is a next page."""
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode_cursor(key, listing, position(rows[limit - 1]))
