"""The per-recipient `data` of a publish: a bounded JSON object that PostgreSQL can store,
and that holds what the campaign's templates need.

A publish of 100,000 recipients carries ~30 MB of it. It arrives as JSON text
(`Recipient.data` is a msgspec.Raw) and is stored as that text when it is plainly fine,
so that no Python object is made for it at all: decoding 100,000 objects of 300 bytes,
and encoding them again for the COPY, cost ~270 ms of the event loop and ~100 MB (ADR
0056). Text that PostgreSQL might refuse or that could strain a reader (a `\\u` escape:
maybe NUL or a lone surrogate; a number with an exponent: maybe beyond `numeric`; deep
nesting; bytes that are not UTF-8) is decoded, checked exactly and stored re-encoded.

Error details name the recipient's path, never a value: `data` is patient data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from app.domain.errors import InvalidInput
from app.domain.templates import CampaignTemplates

MAX_DEPTH = 32
"""Objects and arrays nested in one recipient's data, at most. A template reads a few
levels; deeper text would only cost the worker (it decodes every claimed delivery's
data) and PostgreSQL's parser."""
MISSING_DATA = "missing_data"
"""Skip reason: the data lacks a path that the campaign's templates read without a default."""

_EXPONENT = re.compile(rb"[0-9][eE]")
"""A number with an exponent, or a string that looks like one (then checked exactly)."""


class _Unstorable(Exception):
    """Why a recipient's data cannot be stored; the message names no value."""


def stored_data(data: Sequence[msgspec.Raw | None], max_bytes: int) -> list[bytes | None]:
    """The JSON text to store for each recipient of a publish (None: no data);
    InvalidInput naming `$.recipients[i].data` for the first one that is not an object, is
    larger than `max_bytes` or cannot be stored."""
    return [
        storable_data(raw, max_bytes, f"$.recipients[{position}].data")
        for position, raw in enumerate(data)
    ]


def storable_data(raw: msgspec.Raw | None, max_bytes: int, path: str) -> bytes | None:
    """One recipient's data as stored (None: no data); InvalidInput naming `path`."""
    try:
        return _storable(raw, max_bytes)
    except _Unstorable as exc:
        raise InvalidInput("a recipient's data is not valid", {path: str(exc)}) from None


def _storable(raw: msgspec.Raw | None, max_bytes: int) -> bytes | None:
    if raw is None:
        return None
    text = bytes(raw)
    if text == b"null":
        return None
    if not text.startswith(b"{"):
        raise _Unstorable("must be a JSON object")
    if len(text) > max_bytes:
        raise _Unstorable(f"larger than {max_bytes} bytes as JSON")
    plain = (
        b"\\u" not in text
        and _EXPONENT.search(text) is None
        and text.count(b"{") + text.count(b"[") <= MAX_DEPTH
    )
    if not text.isascii():
        try:
            text.decode()
        except UnicodeDecodeError:
            raise _Unstorable("not UTF-8") from None
    if plain:
        return text
    try:
        value = msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        raise _Unstorable("not storable: a number out of range, or a broken escape") from None
    _check(value, 1)
    return msgspec.json.encode(value)


def _check(value: Any, depth: int) -> None:
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise _Unstorable(f"nested deeper than {MAX_DEPTH} levels")
        for key, item in value.items():
            if "\x00" in key:
                raise _Unstorable("a name holds a NUL character, which cannot be stored")
            _check(item, depth + 1)
    elif isinstance(value, list):
        if depth > MAX_DEPTH:
            raise _Unstorable(f"nested deeper than {MAX_DEPTH} levels")
        for item in value:
            _check(item, depth + 1)
    elif isinstance(value, str) and "\x00" in value:
        raise _Unstorable("a text holds a NUL character, which cannot be stored")


def missing_data(
    templates: CampaignTemplates | None, data: Sequence[bytes | None], skips: Mapping[int, str]
) -> dict[int, str]:
    """Position -> MISSING_DATA for each recipient not skipped already whose data lacks a
    path the templates require (static analysis, once per campaign: `required`)."""
    if templates is None or not templates.required:
        return {}
    decode = msgspec.json.decode
    return {
        position: MISSING_DATA
        for position, text in enumerate(data)
        if position not in skips
        and templates.missing(None if text is None else decode(text)) is not None
    }
