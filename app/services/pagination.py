"""Keyset pagination with opaque, encrypted cursors.

A cursor is the sort key of the last row of a page (msgpack), encrypted and authenticated
with AES-256-GCM; the listing it was issued for (which list, whose campaign or run, which
filters, and the brands of the token it was issued to: `listing_of`) is its associated
data: covered by the tag, never sent. A cursor that was altered, made up, or issued for
another listing or another brand scope fails the check and is a 400 `invalid_cursor`.

Encrypted, not only signed: a suppression listing's sort key is an address, patient data,
and cursors travel in URLs (proxies' and browsers' logs). The key is not what keeps brands
apart: every page query applies the caller's brands again, so a cursor only ever says
where to resume; and a position that decrypts but lies outside its type's bounds (a key
that leaked, a cursor of another release) is invalid too, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, TypeVar, cast
from uuid import UUID

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.domain.errors import InvalidCursor

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_NONCE_BYTES = 12
_TAG_BYTES = 16

# The positions of the listings, with the bounds of their columns (typed for mypy as the
# plain tuples they decode to).
ByCreation = cast(
    "type[tuple[datetime, UUID]]", tuple[Annotated[datetime, msgspec.Meta(tz=True)], UUID]
)
"""Newest-first listings (campaigns, runs): `created_at` and `id` of the last row."""
ByPosition = cast("type[tuple[int]]", tuple[Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]])
"""Deliveries: the `position` (an int4) of the last row."""
BySuppression = cast(
    "type[list[str]]",
    Annotated[
        list[Annotated[str, msgspec.Meta(max_length=320, pattern="^[^\\x00]*$")]],
        msgspec.Meta(min_length=1, max_length=2),
    ],
)
"""Suppressions: the address and the topic ('' brand-wide) of the last row; a cursor of
the release before topics (0016) holds the address alone (brand-wide)."""


def cursor_key(secret: str) -> bytes:
    """The AES-256 key of cursors, derived so that it is never the secret itself."""
    return hmac.new(secret.encode(), b"messaging pagination cursor", hashlib.sha256).digest()


def listing_of(brands: Sequence[str], *parts: Any) -> tuple[Any, ...]:
    """What a cursor is bound to: the listing's `parts` and the caller's brand scope (the
    token's `brands` as a set, `*` included as it is)."""
    return (*parts, sorted(set(brands)))


@lru_cache(maxsize=4)
def _cipher(key: bytes) -> AESGCM:
    return AESGCM(key)


def encode_cursor(key: bytes, listing: Sequence[Any], position: Sequence[Any]) -> str:
    """The cursor that resumes `listing` after the row whose sort key is `position`."""
    nonce = os.urandom(_NONCE_BYTES)  # random: 2^32 cursors per key before any concern
    payload = msgspec.msgpack.encode(list(position))
    sealed = _cipher(key).encrypt(nonce, payload, msgspec.msgpack.encode(list(listing)))
    return base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")


def decode_cursor(key: bytes, listing: Sequence[Any], cursor: str, type_: type[T]) -> T:
    """The position in `cursor`, typed as `type_` (with its bounds); InvalidCursor unless
    this service issued it for this very `listing`."""
    invalid = InvalidCursor(
        "the cursor is not one this listing issued; start again without a cursor",
        {"query.cursor": "invalid"},
    )
    try:
        token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise invalid from None
    if len(token) <= _NONCE_BYTES + _TAG_BYTES:
        raise invalid
    nonce, sealed = token[:_NONCE_BYTES], token[_NONCE_BYTES:]
    try:
        payload = _cipher(key).decrypt(nonce, sealed, msgspec.msgpack.encode(list(listing)))
        return msgspec.msgpack.decode(payload, type=type_)
    except InvalidTag:
        raise invalid from None
    except msgspec.DecodeError:
        # Ours, but not of this shape or out of its bounds: a cursor of another release,
        # or made with a key that leaked.
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
