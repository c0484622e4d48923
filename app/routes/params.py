"""Query and header parameters shared by routes, with their limits and documentation."""

from __future__ import annotations

from typing import Annotated

from litestar.params import HeaderParameter, QueryParameter

from app.idempotency import HEADER as IDEMPOTENCY_KEY
from app.idempotency import MAX_KEY_LENGTH
from app.pagination import MAX_LIMIT

Limit = Annotated[
    int, QueryParameter(ge=1, le=MAX_LIMIT, description=f"Page size, 1 to {MAX_LIMIT}.")
]
Cursor = Annotated[
    str | None,
    QueryParameter(
        max_length=512,
        description="The `next_cursor` of the previous page; omit it for the first page.",
    ),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name=IDEMPOTENCY_KEY,
        max_length=MAX_KEY_LENGTH + 2,  # + the quotes of the Structured Field form
        description="Makes a retry safe: a repeat with the same body within 24 h returns "
        "the original run (202) and creates nothing; with another body it is a 422.",
    ),
]
