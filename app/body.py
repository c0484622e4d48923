"""Typed decoding of JSON request bodies with msgspec, errors named by JSON path.

Handlers of large bodies (publish) decode with `MsgspecJSON` rather than Litestar's default
`data` handling, which first builds Python dicts and then converts them: one typed pass
is about twice as fast on a 100,000-recipient body and reports msgspec's exact path.
"""

from __future__ import annotations

from collections.abc import Generator, Hashable
from functools import lru_cache
from typing import Any, Generic, TypeVar, cast

import msgspec
from litestar.dto import AbstractDTO
from litestar.dto._backend import DTOBackend
from litestar.dto.data_structures import DTOFieldDefinition
from litestar.openapi.spec import Reference, Schema
from litestar.typing import FieldDefinition

from app.errors import InvalidInput, UnsupportedMediaType

T = TypeVar("T")


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
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `")
        raise InvalidInput(
            "the request body is not valid", {path.rstrip("`") or "$": message}
        ) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput("the request body is not valid JSON", {"$": str(exc)}) from None


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
