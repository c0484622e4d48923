"""A brand's suppression list: addresses it must never send to again.

An address is patient data: no error here quotes it (the caller knows what it sent, and
error bodies end up in places an answer of the API does not, such as proxies' logs)."""

from __future__ import annotations

import asyncpg

from app.domain.access import Caller
from app.domain.errors import InvalidInput, NotFound
from app.domain.recipients import channel_of, normalise
from app.domain.schemas import Suppression, SuppressionPage
from app.services.campaigns import require_brand
from app.services.pagination import ByAddress, decode_cursor, listing_of, split_page
from db.suppressions import SuppressionRepository


def suppression_address(recipient: str) -> str:
    """The address as publish compares it (e-mail lower-cased); InvalidInput if it is
    neither an e-mail address nor an E.164 number, since it could never match."""
    channel = channel_of(recipient)
    if channel is None:
        raise InvalidInput(
            "a suppression is an e-mail address or an E.164 phone number",
            {"path.recipient": "not an e-mail address or an E.164 number"},
        )
    return normalise(channel, recipient)


async def put_suppression(
    conn: asyncpg.Connection, brand_id: str, recipient: str, reason: str, caller: Caller
) -> Suppression:
    require_brand(caller, brand_id)
    record = await SuppressionRepository(conn).put(brand_id, suppression_address(recipient), reason)
    return _suppression(record)


async def get_suppression(
    conn: asyncpg.Connection, brand_id: str, recipient: str, caller: Caller
) -> Suppression:
    require_brand(caller, brand_id)
    record = await SuppressionRepository(conn).get(brand_id, suppression_address(recipient))
    if record is None:
        raise NotFound(f"the address is not suppressed for brand {brand_id}")
    return _suppression(record)


async def delete_suppression(
    conn: asyncpg.Connection, brand_id: str, recipient: str, caller: Caller
) -> None:
    require_brand(caller, brand_id)
    if not await SuppressionRepository(conn).remove(brand_id, suppression_address(recipient)):
        raise NotFound(f"the address is not suppressed for brand {brand_id}")


async def list_suppressions(
    conn: asyncpg.Connection,
    brand_id: str,
    caller: Caller,
    *,
    reason: str | None,
    limit: int,
    cursor: str | None,
    cursor_key: bytes,
) -> SuppressionPage:
    """The brand's suppressions in address order."""
    require_brand(caller, brand_id)
    listing = listing_of(caller.brands, "suppressions", brand_id, reason)
    after = decode_cursor(cursor_key, listing, cursor, ByAddress)[0] if cursor else None
    rows = await SuppressionRepository(conn).page(
        brand_id, reason=reason, after=after, limit=limit + 1
    )
    page, next_cursor = split_page(rows, limit, cursor_key, listing, lambda row: (row["address"],))
    return SuppressionPage(items=[_suppression(row) for row in page], next_cursor=next_cursor)


def _suppression(record: asyncpg.Record) -> Suppression:
    return Suppression(
        brand_id=record["brand_id"],
        recipient=record["address"],
        reason=record["reason"],
        created_at=record["created_at"],
    )
