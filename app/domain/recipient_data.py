"""The per-recipient `data` of a publish: a bounded JSON object that PostgreSQL can store,
and that holds what the campaign's templates need.

A publish of 100,000 recipients carries ~30 MB of it. It arrives as JSON text
(`Recipient.data` is a msgspec.Raw), is checked by a typed decode whose objects are
dropped at once, and is stored as the very text that came: no Python object is kept for
it, and nothing is encoded again for the COPY (keeping the decoded objects and encoding
them again cost ~270 ms and ~100 MB for 100,000 of them; ADR 0060). The decode refuses
what PostgreSQL would refuse (bytes that are not UTF-8, a lone surrogate, a number beyond
a double, too large or too small: jsonb refuses `1e-20000`, and keeps `1e-16383` as
16,000 digits that the worker would read for each delivery) and nesting deeper than
MAX_DEPTH. NUL (`\\u0000`), which jsonb cannot hold
either, is refused by PostgreSQL itself, and that refusal is a 400 like that of a NUL in
any text (app/http/error_handlers.py): looking for it here cost a search of every
recipient's text.

Error details name the recipient's path, never a value: `data` is patient data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, NoReturn, Union

import msgspec

from app.domain.errors import InvalidInput
from app.domain.templates import CampaignTemplates

MAX_DEPTH = 10
"""Objects and arrays nested in one recipient's data, the top object included. A template
reads a few levels; deeper ones would only cost the worker (it decodes the data of every
delivery it claims)."""
MISSING_DATA = "missing_data"
"""Skip reason: the data lacks a path that the campaign's templates read without a default."""

_Scalar = Union[str, int, float, bool, None]  # noqa: UP007 - built into nested types below


@cache
def _decoder() -> msgspec.json.Decoder[Any]:
    """A JSON object at most MAX_DEPTH deep. (Built once, on first use: each level names
    the one below twice, and typing hashes it all, 2^MAX_DEPTH.)"""
    level: Any = _Scalar
    for _ in range(MAX_DEPTH - 1):
        level = Union[_Scalar, list[level], dict[str, level]]  # noqa: UP007
    return msgspec.json.Decoder(dict[str, level])


def stored_data(data: Sequence[msgspec.Raw | None], max_bytes: int) -> list[msgspec.Raw | None]:
    """The JSON text to store for each recipient of a publish (None: no data), as it came;
    InvalidInput naming `$.recipients[i].data` for the first one that is not an object, is
    larger than `max_bytes` or cannot be stored. A tight loop: it runs 100,000 times."""
    decode = _decoder().decode
    stored: list[msgspec.Raw | None] = []
    for position, raw in enumerate(data):
        if raw is None or (len(raw) == 4 and bytes(raw) == b"null"):
            stored.append(None)
            continue
        if len(raw) > max_bytes:
            _refuse(position, f"larger than {max_bytes} bytes as JSON")
        try:
            decode(raw)
        except msgspec.ValidationError as exc:
            # A number beyond a double, not an object at all, or a value too deep inside one.
            _refuse(position, _problem(str(exc)))
        except msgspec.DecodeError:
            _refuse(position, _UNSTORABLE)
        # msgspec takes a number too small for a double as 0.0: a search in C finds the
        # exponents that may be one (a text may hold the same characters), then Python's
        # decoder, which hands over each number's own text, tells.
        if _SMALL_EXPONENT.search(raw) and _underflows(raw):
            _refuse(position, _UNSTORABLE)
        stored.append(raw)
    return stored


def _problem(message: str) -> str:
    if message.startswith("Number out of range"):
        return _UNSTORABLE
    return _NESTED if " - at `" in message else "must be a JSON object"


_NESTED = f"nested deeper than {MAX_DEPTH} levels"
_UNSTORABLE = "not storable: a number beyond a double, or not UTF-8"
_SMALL_EXPONENT = re.compile(rb"[0-9][eE]-0*[1-9][0-9]{2}")
"""An exponent of -100 or less: the only numbers that may be too small for a double."""


class _Underflow(Exception):
    pass


def _double(text: str) -> float:
    value = float(text)
    if value == 0.0 and any(digit in "123456789" for digit in re.split("[eE]", text)[0]):
        raise _Underflow
    return value


def _underflows(raw: msgspec.Raw | bytes) -> bool:
    try:
        json.loads(bytes(raw), parse_float=_double)
    except _Underflow:
        return True
    return False


def _refuse(position: int, problem: str) -> NoReturn:
    path = f"$.recipients[{position}].data"
    raise InvalidInput("a recipient's data is not valid", {path: problem})


def check_preview_data(data: dict[str, Any] | None, max_bytes: int) -> None:
    """The bounds of a publish's data, for the one recipient of a preview (named `$.data`);
    and no NUL, which a publish learns from PostgreSQL's refusal (a 400 like any NUL)."""
    if data is None:
        return
    try:
        stored_data([msgspec.Raw(msgspec.json.encode(data))], max_bytes)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, {"$.data": next(iter(exc.details.values()))}) from None
    if _holds_nul(data):
        raise InvalidInput("a recipient's data is not valid", {"$.data": "holds a NUL character"})


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in key or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def missing_data(
    templates: CampaignTemplates | None,
    data: Sequence[msgspec.Raw | None],
    skips: Mapping[int, str],
) -> dict[int, str]:
    """Position -> MISSING_DATA for each recipient not skipped already whose data lacks a
    path the templates require (found once per campaign by static analysis)."""
    if templates is None or not templates.required:
        return {}
    return {
        position: MISSING_DATA
        for position, text in enumerate(data)
        if position not in skips and not templates.present_in_json(text)
    }
