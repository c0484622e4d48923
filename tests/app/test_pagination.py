"""Encrypted keyset cursors (app/services/pagination.py), without HTTP."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import pytest

from app.domain.errors import InvalidCursor
from app.services.pagination import (
    ByCreation,
    ByPosition,
    BySuppression,
    cursor_key,
    decode_cursor,
    encode_cursor,
    split_page,
)

KEY = cursor_key("secret")
LISTING = ("runs", "c1")
POSITION = (datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC), uuid.uuid4())
Position = tuple[datetime, uuid.UUID]


def test_a_cursor_gives_back_its_position_exactly():
    cursor = encode_cursor(KEY, LISTING, POSITION)

    assert decode_cursor(KEY, LISTING, cursor, Position) == POSITION
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor


def tampered(cursor: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("index", [0, 15, 16, -1])
def test_any_flipped_bit_is_detected(index):
    cursor = encode_cursor(KEY, LISTING, POSITION)

    with pytest.raises(InvalidCursor):
        decode_cursor(KEY, LISTING, tampered(cursor, index), Position)


@pytest.mark.parametrize(
    ("key", "listing"),
    [(cursor_key("another secret"), LISTING), (KEY, ("runs", "c2")), (KEY, ("campaigns", "c1"))],
)
def test_a_cursor_of_another_listing_or_key_is_invalid(key, listing):
    cursor = encode_cursor(KEY, LISTING, POSITION)

    with pytest.raises(InvalidCursor):
        decode_cursor(key, listing, cursor, Position)


@pytest.mark.parametrize("cursor", ["", "A", "!!!!", "é", "AAAAAAAAAAAAAAAAAAAAAAAA", "a" * 600])
def test_garbage_is_invalid(cursor):
    with pytest.raises(InvalidCursor) as raised:
        decode_cursor(KEY, LISTING, cursor, Position)
    assert raised.value.code == "invalid_cursor"


def test_a_signed_position_of_another_shape_is_invalid():
    cursor = encode_cursor(KEY, LISTING, ("not", "a", "position"))

    with pytest.raises(InvalidCursor):
        decode_cursor(KEY, LISTING, cursor, Position)


def test_split_page_cuts_at_limit_and_points_after_the_last_row():
    rows = [{"n": n} for n in range(4)]

    page, cursor = split_page(rows, 3, KEY, LISTING, lambda row: (row["n"],))
    last, none = split_page(rows[:3], 3, KEY, LISTING, lambda row: (row["n"],))

    assert page == rows[:3] and last == rows[:3] and none is None
    assert cursor is not None
    assert decode_cursor(KEY, LISTING, cursor, tuple[int]) == (2,)


def test_a_cursor_shows_nothing_of_its_position():
    """A suppression listing resumes after an address: patient data, and cursors travel
    in URLs. The cursor is encrypted, not only signed."""
    listing = ("suppressions", "brand-a", None, ["brand-a"])
    cursor = encode_cursor(KEY, listing, ("patient@clinic.example", "newsletter"))
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))

    assert b"patient" not in raw and b"clinic" not in raw and "patient" not in cursor
    assert decode_cursor(KEY, listing, cursor, BySuppression) == [
        "patient@clinic.example",
        "newsletter",
    ]
    # Two cursors of the same position differ: no position can be told from another's.
    assert encode_cursor(KEY, listing, ("patient@clinic.example", "newsletter")) != cursor


@pytest.mark.parametrize(
    ("position", "type_"),
    [
        ((2**40,), ByPosition),  # beyond the int4 of deliveries.position: was a 500
        ((2**31,), ByPosition),
        ((-1,), ByPosition),
        (("a\x00b", ""), BySuppression),  # no text PostgreSQL can store
        (("a" * 321 + "@example.com", ""), BySuppression),
        ((), BySuppression),
        (("a@example.com", "newsletter", "more"), BySuppression),
        ((datetime(2026, 1, 1, tzinfo=UTC).isoformat(), "not an id"), ByCreation),
    ],
)
def test_a_position_outside_its_bounds_is_invalid_even_made_with_the_key(position, type_):
    """Made with the key (one that leaked, say): still a 400, never a 500 from the query."""
    cursor = encode_cursor(KEY, LISTING, position)

    with pytest.raises(InvalidCursor):
        decode_cursor(KEY, LISTING, cursor, type_)
