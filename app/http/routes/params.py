"""Path, query and header parameters shared by routes, with their limits and documentation.

A parameter that names the same thing as a body field has the same bounds (a brand in a
path or a filter is a `BrandId`); a violation is a 400 naming the parameter
(`path.brand_id`, `query.limit`). app/http/raw_params.py adds what Litestar cannot see once it
has decoded the URL: invalid UTF-8, and integers not written in digits.
"""

from __future__ import annotations

from typing import Annotated

from litestar.openapi.spec.enums import OpenAPIType
from litestar.params import HeaderParameter, PathParameter, QueryParameter

from app.domain.recipients import ADDRESS_PATTERN, MAX_EMAIL_LENGTH
from app.domain.schemas import ADDRESS_LENGTH, BRAND_ID_LENGTH, BRAND_ID_PATTERN, TOPIC_PATTERN
from app.services.idempotency import HEADER as IDEMPOTENCY_KEY
from app.services.idempotency import KEY_PATTERN as IDEMPOTENCY_KEY_PATTERN
from app.services.idempotency import MAX_KEY_LENGTH
from app.services.pagination import MAX_LIMIT

Limit = Annotated[
    int, QueryParameter(ge=1, le=MAX_LIMIT, description=f"Page size, 1 to {MAX_LIMIT}.")
]
Cursor = Annotated[
    str | None,
    QueryParameter(
        min_length=1,
        max_length=512,
        description="The `next_cursor` of the previous page; omit it for the first page.",
    ),
]
BrandPath = Annotated[
    str,
    PathParameter(
        min_length=BRAND_ID_LENGTH[0],
        max_length=BRAND_ID_LENGTH[1],
        pattern=BRAND_ID_PATTERN,
        description="The brand: 1 to 100 characters, not `*`.",
    ),
]
BrandFilter = Annotated[
    str | None,
    QueryParameter(
        min_length=BRAND_ID_LENGTH[0],
        max_length=BRAND_ID_LENGTH[1],
        pattern=BRAND_ID_PATTERN,
        description="Only this brand's (1 to 100 characters, not `*`).",
    ),
]
RecipientPath = Annotated[
    str,
    PathParameter(
        min_length=ADDRESS_LENGTH[0],
        max_length=MAX_EMAIL_LENGTH,
        # Checked by app.services.suppressions.suppression_address, which names `path.recipient`.
        schema_extra={"pattern": ADDRESS_PATTERN},
        description="An e-mail address or an E.164 phone number (`+` and 2 to 15 digits).",
    ),
]
TopicPath = Annotated[
    str,
    PathParameter(
        min_length=1,
        max_length=64,
        pattern=TOPIC_PATTERN,
        description="The topic: 1 to 64 characters of `a-z`, `0-9`, `_` and `-`.",
    ),
]
TopicFilter = Annotated[
    str | None,
    QueryParameter(
        min_length=1,
        max_length=64,
        pattern=TOPIC_PATTERN,
        description="Only the suppressions of this topic (brand-wide ones are not listed).",
    ),
]
CampaignId = Annotated[
    str,
    PathParameter(
        format="uuid",
        max_length=36,
        description="The campaign's id. An id that is no campaign of the token's brands "
        "(not a UUID, unknown, another brand's) is a 404.",
    ),
]
RunId = Annotated[
    str,
    PathParameter(
        format="uuid",
        max_length=36,
        description="The run's id; one that is no run of this campaign is a 404.",
    ),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name=IDEMPOTENCY_KEY,
        # Bounded by app.services.idempotency.parse_key, which names the header in its 400; a
        # `max_length` here would make Litestar name the Python parameter instead.
        # A string when sent (not the `null` of the Python default); the pattern bounds the
        # key, maxLength the header: quoted, every character escaped.
        schema_extra={
            "oneOf": None,
            "type": OpenAPIType.STRING,
            "minLength": 1,
            "maxLength": 2 * MAX_KEY_LENGTH + 2,
            "pattern": IDEMPOTENCY_KEY_PATTERN,
        },
        description="Makes a retry safe: a repeat with the same body within 24 h returns "
        f"the original run (202) and creates nothing; with another body it is a 422. "
        f'1 to {MAX_KEY_LENGTH} printable ASCII characters, bare or as a quoted string ("...").',
    ),
]
