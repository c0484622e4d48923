"""Typed decoding of JSON request bodies with msgspec, errors named by JSON path.

Every handler with a body decodes it with `MsgspecJSON` rather than Litestar's default
`data` handling, which first builds Python dicts and then converts them: one typed pass
is about twice as fast on a 100,000-recipient body and reports msgspec's exact path.

Decoding, and its bound on nesting: app/domain/decoding.py.

Bodies are bounded too: CAMPAIGN_BODY_BYTES for a campaign (its message body may be
100,000 characters), SMALL_BODY_BYTES for the other small bodies; only publish reads up to
`PUBLISH_MAX_BODY_BYTES`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Generic, TypeVar

from litestar.dto import AbstractDTO
from litestar.dto._backend import DTOBackend
from litestar.dto.data_structures import DTOFieldDefinition
from litestar.openapi.spec import Reference, Schema
from litestar.typing import FieldDefinition

from app.domain.decoding import decode_json

T = TypeVar("T")

CAMPAIGN_BODY_BYTES = 1024 * 1024
SMALL_BODY_BYTES = 64 * 1024


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
