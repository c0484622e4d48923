"""A brand's suppression list: addresses it must never send to again, brand-wide or for one
topic; and the one-click unsubscribe that adds them.

An address is patient data: no error here quotes it (the caller knows what it sent, and
error bodies end up in places an answer of the API does not, such as proxies' logs)."""

from __future__ import annotations

import asyncpg

from app.core.unsubscribe import Unsubscription
from app.domain.access import Caller
from app.domain.errors import InvalidInput, NotFound
from app.domain.recipients import channel_of, normalise
from app.domain.schemas import Suppression, SuppressionPage
from app.services.campaigns import require_brand
from app.services.pagination import BySuppression, decode_cursor, listing_of, split_page
from db.suppressions import NewSuppression, SuppressionRepository


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


def _not_suppressed(brand_id: str, topic: str | None) -> NotFound:
    scope = f"topic {topic} of brand {brand_id}" if topic else f"brand {brand_id}"
    return NotFound(f"the address is not suppressed for {scope}")


async def put_suppression(
    conn: asyncpg.Connection,
    brand_id: str,
    recipient: str,
    reason: str,
    caller: Caller,
    topic: str | None = None,
) -> Suppression:
    """Suppress the address brand-wide (`topic` None) or for `topic`; a repeat may change
    the reason."""
    require_brand(caller, brand_id)
    entry = NewSuppression(brand_id, suppression_address(recipient), reason, topic)
    [record] = await SuppressionRepository(conn).add(
        [entry], "api", new_reason=True, sub=caller.sub
    )
    return _suppression(record)


async def get_suppression(
    conn: asyncpg.Connection,
    brand_id: str,
    recipient: str,
    caller: Caller,
    topic: str | None = None,
) -> Suppression:
    require_brand(caller, brand_id)
    record = await SuppressionRepository(conn).get(brand_id, suppression_address(recipient), topic)
    if record is None:
        raise _not_suppressed(brand_id, topic)
    return _suppression(record)


async def delete_suppression(
    conn: asyncpg.Connection,
    brand_id: str,
    recipient: str,
    caller: Caller,
    topic: str | None = None,
) -> None:
    require_brand(caller, brand_id)
    if not await SuppressionRepository(conn).remove(
        brand_id, suppression_address(recipient), topic, sub=caller.sub
    ):
        raise _not_suppressed(brand_id, topic)


async def list_suppressions(
    conn: asyncpg.Connection,
    brand_id: str,
    caller: Caller,
    *,
    reason: str | None,
    limit: int,
    cursor: str | None,
    cursor_key: bytes,
    topic: str | None = None,
) -> SuppressionPage:
    """The brand's suppressions (of `topic` only, if given) in address order, each
    address's brand-wide one first."""
    require_brand(caller, brand_id)
    parts = (brand_id, reason) if topic is None else (brand_id, reason, topic)
    listing = listing_of(caller.brands, "suppressions", *parts)
    after = None
    if cursor:
        position = decode_cursor(cursor_key, listing, cursor, BySuppression)
        after = (position[0], position[1] if len(position) > 1 else "")
    rows = await SuppressionRepository(conn).page(
        brand_id, reason=reason, topic=topic, after=after, limit=limit + 1
    )
    page, next_cursor = split_page(
        rows, limit, cursor_key, listing, lambda row: (row["address"], row["topic"] or "")
    )
    return SuppressionPage(items=[_suppression(row) for row in page], next_cursor=next_cursor)


async def unsubscribe(conn: asyncpg.Connection, unsubscription: Unsubscription) -> bool:
    """What a one-click unsubscribe does: the address suppressed for the brand and topic
    of its link, reason `unsubscribed` (one already suppressed keeps its reason). True if
    this added it; a repeat changes nothing."""
    entry = NewSuppression(
        unsubscription.brand_id,
        unsubscription.address,
        "unsubscribed",
        unsubscription.topic,
        unsubscription.run_id,
    )
    [record] = await SuppressionRepository(conn).add([entry], "one_click")
    return bool(record["created"])


def _suppression(record: asyncpg.Record) -> Suppression:
    return Suppression(
        brand_id=record["brand_id"],
        recipient=record["address"],
        reason=record["reason"],
        created_at=record["created_at"],
        topic=record["topic"],
    )
