"""SQL of the audit trail: `record_audit`, the one way a row of `audit_events` is written,
in the transaction of the change it records; the listing; the month partitions that
retention drops (jobs/retention.py). The table refuses UPDATE and DELETE (0017)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import asyncpg

from app.core.logs import bound
from app.domain.schemas import AuditAction, AuditTargetType
from db.params import Params
from db.retention import partition_months

Action = AuditAction
TargetType = AuditTargetType
RECIPIENT = "recipient"
"""The actor of what recipients do themselves: a one-click unsubscribe, an SMS keyword."""

COLUMNS = "id, occurred_at, brand_id, actor, action, target_type, target_id, request_id, changes"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    brand_id: str
    actor: str
    action: Action
    target_type: TargetType
    target_id: str
    changes: Mapping[str, Any] = field(default_factory=dict)
    """{field: {"old": ..., "new": ...}} (`changes_between`); never a message's text."""


def changes_between(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    fields: Iterable[str],
    texts: Iterable[str] = (),
) -> dict[str, Any]:
    """The `fields` whose values differ from `old` to `new` (None: the row did not exist,
    or no longer does), as {"old": ..., "new": ...}. The `texts` (a message's subject and
    bodies: templates that may hold anything) only as {"changed": true}: the trail says
    who changed the words, the words stay in the campaign."""
    before, after = old or {}, new or {}
    changes: dict[str, Any] = {
        name: {"old": before.get(name), "new": after.get(name)}
        for name in fields
        if before.get(name) != after.get(name)
    }
    changes.update(
        (name, {"changed": True}) for name in texts if before.get(name) != after.get(name)
    )
    return changes


async def record_audit(conn: asyncpg.Connection, *events: AuditEvent) -> None:
    """A row of `audit_events` per event, in one statement, in the caller's transaction:
    the change and its row commit together or not at all. `request_id`: the id of the API
    request being served (none in the worker)."""
    if not events:
        return
    assert conn.is_in_transaction(), "an audit row commits with its change"
    if len(events) == 1:  # most changes: plain VALUES, a little cheaper than unnest
        await conn.execute(*audit_insert(events[0], first=1))
        return
    await conn.execute(
        f"""
        INSERT INTO audit_events ({_WRITTEN})
        SELECT e.brand_id, e.actor, e.action, e.target_type, e.target_id, $6, e.changes
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $7::jsonb[])
            AS e(brand_id, actor, action, target_type, target_id, changes)
        """,
        [e.brand_id for e in events],
        [e.actor for e in events],
        [e.action for e in events],
        [e.target_type for e in events],
        [e.target_id for e in events],
        bound("request_id"),
        [e.changes for e in events],
    )


def audit_insert(e: AuditEvent, *, first: int) -> tuple[Any, ...]:
    """The INSERT of `e`'s row and its arguments, numbered from `$first`: `record_audit`'s,
    or a CTE of the statement that makes the change (a publish's run: one round trip
    fewer, issue 27's cost target)."""
    numbers = ", ".join(f"${n}" for n in range(first, first + 7))
    return (
        f"INSERT INTO audit_events ({_WRITTEN}) VALUES ({numbers})",
        e.brand_id, e.actor, e.action, e.target_type, e.target_id, bound("request_id"), e.changes,
    )  # fmt: skip


_WRITTEN = "brand_id, actor, action, target_type, target_id, request_id, changes"


@dataclass(frozen=True, slots=True)
class AuditFilters:
    action: str | None = None
    actor: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    """Inclusive."""
    until: datetime | None = None
    """Exclusive."""


class AuditRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def page(
        self,
        brand_id: str,
        filters: AuditFilters,
        *,
        after: tuple[datetime, Any] | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        """Up to `limit` of the brand's audit rows, newest first, after the (occurred_at,
        id) `after`; each filter its own fragment, values as parameters."""
        p = Params()
        conditions = [f"brand_id = {p(brand_id)}"]
        if filters.action is not None:
            conditions.append(f"action = {p(filters.action)}")
        if filters.actor is not None:
            conditions.append(f"actor = {p(filters.actor)}")
        if filters.target_id is not None:
            conditions.append(f"target_id = {p(filters.target_id)}")
        if filters.since is not None:
            conditions.append(f"occurred_at >= {p(filters.since)}")
        if filters.until is not None:
            conditions.append(f"occurred_at < {p(filters.until)}")
        if after is not None:
            conditions.append(f"(occurred_at, id) < ({p(after[0])}, {p(after[1])})")
        rows: list[asyncpg.Record] = await self.conn.fetch(
            f"""
            SELECT {COLUMNS} FROM audit_events WHERE {" AND ".join(conditions)}
            ORDER BY occurred_at DESC, id DESC LIMIT {p(limit)}
            """,
            *p.values,
        )
        return rows

    async def months(self) -> list[date]:
        """The months that have a partition, oldest first."""
        return await partition_months(self.conn, "audit_events")

    async def ensure_month(self, month: date) -> str:
        """The month's partition, created (and attached) if missing; its name."""
        name: str = await self.conn.fetchval("SELECT audit_events_ensure_partition($1)", month)
        return name

    async def drop_month(self, month: date) -> str:
        """Drop the month's partition, its rows with it; its name."""
        name = f"audit_events_{month:%Y_%m}"
        await self.conn.execute("SELECT audit_events_drop_partition($1)", name)
        return name
