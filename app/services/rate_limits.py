"""A brand's own rate limits (the worker applies them: jobs/limits.py)."""

from __future__ import annotations

import asyncpg

from app.domain.access import Caller
from app.domain.schemas import RateLimit
from app.services.campaigns import require_brand
from db.audit import AuditEvent, changes_between, record_audit
from db.rate_limits import RateLimitRepository


async def get_rate_limit(conn: asyncpg.Connection, brand_id: str, caller: Caller) -> RateLimit:
    """The brand's caps; both null when it has none."""
    require_brand(caller, brand_id)
    caps = await RateLimitRepository(conn).brand_caps(brand_id)
    if caps is None:
        return RateLimit(email_per_second=None, sms_per_second=None)
    return RateLimit(**caps)


async def put_rate_limit(
    conn: asyncpg.Connection, brand_id: str, limit: RateLimit, caller: Caller
) -> RateLimit:
    require_brand(caller, brand_id)
    new = {"email_per_second": limit.email_per_second, "sms_per_second": limit.sms_per_second}
    async with conn.transaction():
        limits = RateLimitRepository(conn)
        old = await limits.brand_caps(brand_id, lock=True)
        await limits.set_brand_caps(brand_id, limit.email_per_second, limit.sms_per_second)
        # A repeat changes nothing, and records nothing.
        if changes := changes_between(old, new, new):
            event = AuditEvent(
                brand_id, caller.sub, "rate_limit.updated", "rate_limit", brand_id, changes
            )
            await record_audit(conn, event)
    return limit
