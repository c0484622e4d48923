"""JSON bodies decoded by msgspec into this service's types, their errors named by JSON
path and never quoting the value that was wrong (it may be patient data).

Nesting is bounded by msgspec itself: it decodes (and skips unknown values) recursively
in C under Python's recursion limit, and raises RecursionError beyond it (about 900 levels
inside a request), which is a 400 here. Decoding is typed, so a body of the wrong shape
stops at its first wrong value: the worst 32 MiB body costs about 0.2 s of the event loop
(bench/json_depth.py; ADR 0025).
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from functools import lru_cache
from typing import Any, TypeVar, cast

import msgspec

from app.domain.errors import InvalidInput, UnsupportedMediaType

T = TypeVar("T")

TOO_DEEP = "arrays and objects nested deeper than the decoder's recursion limit"


@lru_cache(maxsize=32)
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def decode_json(content_type: str | None, body: bytes, type_: type[T]) -> T:
    media_type = (content_type or "application/json").split(";")[0].strip()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"the body must be application/json, not {media_type}")
    try:
        decoded: T = _decoder(cast(Hashable, type_)).decode(body)
        return decoded
    except RecursionError:
        raise InvalidInput("the request body is nested too deeply", {"$": TOO_DEEP}) from None
    except msgspec.ValidationError as exc:
        path, message = validation_problem(exc)
        raise InvalidInput("the request body is not valid", {path: message}) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput("the request body is not valid JSON", {"$": str(exc)}) from None


def validation_problem(exc: msgspec.ValidationError, within: str = "$") -> tuple[str, str]:
    """(JSON path, problem) of what msgspec refused, the path under `within`."""
    message, _, path = str(exc).partition(" - at `")
    return within + path.rstrip("`").removeprefix("$"), without_value(message)


_QUOTED_VALUE = re.compile(r"^(Invalid (?:enum |tag )?value) .+$", re.DOTALL)


def without_value(message: str) -> str:
    """msgspec's message without the value it quotes ("Invalid enum value 'x'"): an
    error body names where and what is wrong, never what the caller sent there, which
    may be patient data (an address where a reason belongs)."""
    return _QUOTED_VALUE.sub(r"\1", message)
