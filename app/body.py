"""Typed decoding of JSON request bodies with msgspec, errors named by JSON path.

Handlers of large bodies (publish) decode here rather than through Litestar's `data`
parameter, which first builds Python dicts and then converts them: one typed pass is
about twice as fast on a 100,000-recipient body and reports msgspec's exact path.
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import lru_cache
from typing import Any, TypeVar, cast

import msgspec
from litestar import Request

from app.errors import InvalidInput, UnsupportedMediaType

T = TypeVar("T")


@lru_cache(maxsize=32)
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


async def decode_body(request: Request[Any, Any, Any], type_: type[T]) -> T:
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"the body must be application/json, not {media_type}")
    body = await request.body()
    try:
        decoded: T = _decoder(cast(Hashable, type_)).decode(body)
        return decoded
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `")
        raise InvalidInput(
            "the request body is not valid", {path.rstrip("`") or "$": message}
        ) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput("the request body is not valid JSON", {"$": str(exc)}) from None
