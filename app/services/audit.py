"""Reading a brand's audit trail (the rows are written by db/audit.py `record_audit`, in
the transaction of each change)."""

from __future__ import annotations

from dataclasses import astuple
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
import msgspec

from app.domain.access import Caller
from app.domain.errors import InvalidInput, NotFound
from app.domain.schemas import AuditPage, AuditRecord
from app.services.pagination import ByCreation, decode_cursor, listing_of, split_page
from db.audit import AuditFilters, AuditRepository

_INSTANT = Annotated[datetime, msgspec.Meta(tz=True)]


def parse_instant(value: str | None, name: str) -> datetime | None:
    """An RFC 3339 date-time with its offset, as the UTC instant it names; InvalidInput
    naming `query.<name>` otherwise (years 1 and 9999 included: an offset that takes the
    instant out of them cannot be stored, and is refused too)."""
    if value is None:
        return None
    problem = "an RFC 3339 date-time with an offset, such as 2026-12-01T00:00:00Z"
    try:
        instant = msgspec.convert(value, _INSTANT).astimezone(UTC)
    except (msgspec.ValidationError, OverflowError, ValueError):
        raise InvalidInput(f"{name} is not a date-time", {f"query.{name}": problem}) from None
    return instant


async def list_audit(
    conn: asyncpg.Connection,
    brand_id: str,
    caller: Caller,
    *,
    action: str | None = None,
    actor: str | None = None,
    target_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int,
    cursor: str | None,
    cursor_key: bytes,
) -> AuditPage:
    """The brand's changes, newest first; `since` (inclusive) and `until` (exclusive) are
    RFC 3339 date-times. Another brand's trail is not found: who changed what for a brand
    is none of another's business, not even that there is something."""
    filters = AuditFilters(
        action, actor, target_id, parse_instant(since, "since"), parse_instant(until, "until")
    )
    if not caller.may_act_for(brand_id):
        raise NotFound(f"brand {brand_id} has no audit trail among the token's brands")
    # The filters are the listing's: a cursor holds only (occurred_at, id), never them.
    listing = listing_of(caller.brands, "audit", brand_id, *astuple(filters))
    after = decode_cursor(cursor_key, listing, cursor, ByCreation) if cursor else None
    rows = await AuditRepository(conn).page(brand_id, filters, after=after, limit=limit + 1)
    page, next_cursor = split_page(
        rows, limit, cursor_key, listing, lambda row: (row["occurred_at"], row["id"])
    )
    return AuditPage(items=[AuditRecord(**row) for row in page], next_cursor=next_cursor)
