"""Typed decoding of JSON request bodies with msgspec, errors named by JSON path.

Every handler with a body decodes it with `MsgspecJSON` rather than Litestar's default
`data` handling, which first builds Python dicts and then converts them: one typed pass
is about twice as fast on a 100,000-recipient body and reports msgspec's exact path.

Nesting is bounded by msgspec itself: it decodes (and skips unknown values) recursively
in C under Python's recursion limit, and raises RecursionError beyond it (about 900 levels
inside a request), which is a 400 here. Decoding is typed, so a body of the wrong shape
stops at its first wrong value: the worst 32 MiB body costs about 0.2 s of the event loop
(bench/json_depth.py; ADR 0025).

Bodies are bounded too: CAMPAIGN_BODY_BYTES for a campaign (its message body may be
100,000 characters), SMALL_BODY_BYTES for the other small bodies; only publish reads up to
`PUBLISH_MAX_BODY_BYTES`.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Hashable
from functools import lru_cache
from typing import Any, Generic, TypeVar, cast

import msgspec
from litestar.dto import AbstractDTO
from litestar.dto._backend import DTOBackend
from litestar.dto.data_structures import DTOFieldDefinition
from litestar.openapi.spec import Reference, Schema
from litestar.typing import FieldDefinition

from app.domain.errors import InvalidInput, UnsupportedMediaType

T = TypeVar("T")

CAMPAIGN_BODY_BYTES = 1024 * 1024
SMALL_BODY_BYTES = 64 * 1024
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


class MsgspecJSON(AbstractDTO[T], Generic[T]):
    """`dto=MsgspecJSON[Model]` on a handler with `data: Model`: the body is decoded by
    `decode_json` straight into `Model`, and the OpenAPI document shows `Model` as the
    request body exactly as for a plain `data` parameter.

    Litestar's DTOs exist to transform models field by field; this one only borrows the
    extension point they give to decoding and to the request body's schema.
    """

    @classmethod
    def generate_field_definitions(
        cls, model_type: type[Any]
    ) -> Generator[DTOFieldDefinition, None, None]:
        raise NotImplementedError("MsgspecJSON does not transform fields")

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        return False

    @classmethod
    def create_for_field_definition(
        cls,
        field_definition: FieldDefinition,
        handler_id: str,
        backend_cls: type[DTOBackend] | None = None,
    ) -> None:
        """Nothing to build: there is no transfer model."""

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: Any
    ) -> Reference | Schema:
        schema: Reference | Schema = schema_creator.for_field_definition(
            FieldDefinition.from_annotation(
                cls.model_type, kwarg_definition=field_definition.kwarg_definition
            )
        )
        return schema

    def decode_bytes(self, value: bytes) -> T:
        content_type = self.asgi_connection.headers.get("content-type")
        return decode_json(content_type, value, self.model_type)
