"""SQL of the suppressions table: addresses a brand never sends to again, brand-wide or for
one topic. Every new suppression is written by `SuppressionRepository.add`, with its
`suppression.created` event, whoever adds it; its `source` says who: `api` (PUT),
`one_click` (an unsubscribe link), `provider:<name>` (a provider's feedback or refusal),
`sms_stop` (the recipient texted STOP). The recipient's own SMS opt-outs are added by
`opt_out` and lifted by `opt_in`, and only those: a START never lifts what a brand, a
bounce or a complaint put there.

Every change here writes its audit row (db/audit.py) in its own transaction: `add`,
`remove` and `opt_in` are the only writers of suppressions, whoever calls them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import asyncpg

from db.audit import RECIPIENT, Action, AuditEvent, changes_between, record_audit
from db.events import SUPPRESSION_CREATED, EventRepository, brand_stream
from db.params import Params

COLUMNS = "brand_id, address, nullif(topic, '') AS topic, reason, created_at"
BRAND_WIDE = ""
"""The `topic` of a brand-wide suppression: '' in the key, `null` to the API."""

Source = Literal[
    "api", "one_click", "provider:webhook", "provider:sendgrid", "provider:twilio", "sms_stop"
]
"""Who added a suppression: the API's PUT, an unsubscribe link, a provider (its bounce or
complaint; Twilio's refusal of a number that texted STOP, error 21610), the recipient's
STOP. Shown in its event and kept on its row."""
SMS_STOP: Source = "sms_stop"
"""The recipient texted an opt-out word to a number the brand sends from."""
TWILIO_OPTED_OUT: Source = "provider:twilio"
"""Twilio refused a send with 21610: the recipient had texted STOP to that sender."""
RECIPIENT_OPT_OUTS = (SMS_STOP, TWILIO_OPTED_OUT)
"""The recipient's own word, either way: what their START lifts."""
AUDITED_FIELDS = ("reason", "source", "run_id")


def actor_of(source: Source, sub: str | None) -> str:
    """Who the audit trail names for a change from `source`: the token's `sub` for the
    API, `recipient` for their own unsubscribe or STOP, the provider as it is named."""
    if source == "api":
        if sub is None:
            raise ValueError("a change through the API names its caller's sub")
        return sub
    if source in ("one_click", SMS_STOP):
        return RECIPIENT
    return source


@dataclass(frozen=True, slots=True)
class NewSuppression:
    brand_id: str
    address: str
    """Normalised (e-mail lower-cased): the form publish and the worker compare."""
    reason: str
    topic: str | None = None
    """None: every campaign of the brand; else only those of that topic."""
    run_id: UUID | None = None
    """The run whose message carried the unsubscribe link that was used."""


class SuppressionRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def listed_among(
        self, brand_id: str, addresses: Sequence[str], topic: str | None = None
    ) -> set[str]:
        """The normalised `addresses` suppressed for a campaign of the brand with `topic`:
        brand-wide, or for that topic. Its callers learn first whether the brand has any
        suppression at all (a publish with its campaign, a delivery window with its run):
        most brands have none, and then the addresses need not be sent."""
        rows = await self.conn.fetch(
            """
            SELECT DISTINCT address FROM suppressions
            WHERE brand_id = $1 AND address = ANY($2::text[]) AND topic IN ('', $3)
            """,
            brand_id,
            addresses,
            topic or BRAND_WIDE,
        )
        return {row["address"] for row in rows}

    async def add(
        self,
        entries: Sequence[NewSuppression],
        source: Source,
        *,
        new_reason: bool = False,
        sub: str | None = None,
    ) -> list[asyncpg.Record]:
        """THE way a suppression comes to be: the rows of `entries` that are new, and a
        `suppression.created` event and audit row for each, in one transaction (the
        caller's, if it has one). An entry already suppressed keeps its reason and source,
        unless `new_reason` (the API's PUT, by the token's `sub`: the caller says why now;
        a reason or source so changed is audited as `suppression.created` too, old and
        new). Returns each entry's row as stored (an
        entry repeated once), with `created` (whether this call added it), in the order of
        `entries`; without `new_reason`, a row another transaction committed while this one waited
        for it reads with `reason` and `created_at` null (this statement's snapshot is
        older), and `created` false."""
        # One row per key: a key twice in one INSERT would be a second update of a row.
        unique: dict[tuple[str, str, str | None], NewSuppression] = {}
        for entry in entries:
            unique.setdefault((entry.brand_id, entry.address, entry.topic), entry)
        entries = list(unique.values())
        if not entries:
            return []
        actor = actor_of(source, sub)
        # A new reason is the caller's word now: its source too (a START never lifts it).
        new = "DO UPDATE SET reason = EXCLUDED.reason, source = EXCLUDED.source"
        on_conflict = new if new_reason else "DO NOTHING"
        async with self.conn.transaction():
            rows: list[asyncpg.Record] = await self.conn.fetch(
                f"""
                WITH given AS (
                    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                         $5::uuid[]) WITH ORDINALITY
                        AS g(brand_id, address, topic, reason, run_id, n)
                ), written AS (
                    INSERT INTO suppressions (brand_id, address, topic, reason, source, run_id)
                    SELECT brand_id, address, topic, reason, $6, run_id FROM given ORDER BY n
                    ON CONFLICT (brand_id, address, topic) {on_conflict}
                    -- xmax is 0 on a row this statement inserted, not on one it updated.
                    RETURNING brand_id, address, topic, reason, created_at, xmax = 0 AS created
                )
                -- A row kept as it was (DO NOTHING) is not in `written`: read as it is.
                -- `s` is the statement's snapshot: a row as it was before this statement.
                SELECT g.brand_id, g.address, nullif(g.topic, '') AS topic,
                       coalesce(w.reason, s.reason) AS reason,
                       coalesce(w.created_at, s.created_at) AS created_at,
                       coalesce(w.created, false) AS created,
                       w.brand_id IS NOT NULL AS written, g.run_id,
                       s.reason AS old_reason, s.source AS old_source
                FROM given g
                LEFT JOIN written w USING (brand_id, address, topic)
                LEFT JOIN suppressions s USING (brand_id, address, topic)
                ORDER BY g.n
                """,
                [e.brand_id for e in entries],
                [e.address for e in entries],
                [e.topic or BRAND_WIDE for e in entries],
                [e.reason for e in entries],
                [e.run_id for e in entries],
                source,
            )
            await _record_events([row for row in rows if row["created"]], source, self.conn)
            await record_audit(self.conn, *_created(rows, source, actor))
        return rows

    async def get(
        self, brand_id: str, address: str, topic: str | None = None
    ) -> asyncpg.Record | None:
        record: asyncpg.Record | None = await self.conn.fetchrow(
            f"""
            SELECT {COLUMNS} FROM suppressions
            WHERE brand_id = $1 AND address = $2 AND topic = $3
            """,
            brand_id,
            address,
            topic or BRAND_WIDE,
        )
        return record

    async def remove(
        self, brand_id: str, address: str, topic: str | None = None, *, sub: str
    ) -> bool:
        """True if the address was on the list (of that topic, or brand-wide); the API's
        DELETE, by the token's `sub`, audited in the same transaction."""
        async with self.conn.transaction():
            rows = await self.conn.fetch(
                """
                DELETE FROM suppressions WHERE brand_id = $1 AND address = $2 AND topic = $3
                RETURNING brand_id, address, nullif(topic, '') AS topic, reason, source, run_id
                """,
                brand_id,
                address,
                topic or BRAND_WIDE,
            )
            await record_audit(self.conn, *_deleted(rows, sub))
        return bool(rows)

    async def page(
        self,
        brand_id: str,
        *,
        reason: str | None,
        topic: str | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        """Up to `limit` of the brand's suppressions (of `topic` only, if given) in
        (address, topic) order, brand-wide first, after `after`."""
        p = Params()
        conditions = [f"brand_id = {p(brand_id)}"]
        if reason is not None:
            conditions.append(f"reason = {p(reason)}")
        if topic is not None:
            conditions.append(f"topic = {p(topic)}")
        if after is not None:
            conditions.append(f"(address, topic) > ({p(after[0])}, {p(after[1])})")
        rows: list[asyncpg.Record] = await self.conn.fetch(
            f"""
            SELECT {COLUMNS} FROM suppressions WHERE {" AND ".join(conditions)}
            ORDER BY address, suppressions.topic LIMIT {p(limit)}
            """,
            *p.values,
        )
        return rows

    async def opt_out(
        self, entries: Sequence[tuple[str, str]], source: Source
    ) -> list[asyncpg.Record]:
        """The recipient opted out: suppress each (brand_id, address) brand-wide, reason
        `unsubscribed`, from `source` (SMS_STOP or TWILIO_OPTED_OUT), through `add`. An
        address already suppressed keeps its reason and source. Returns the suppressions it
        added: the one place SMS opt-outs are made."""
        rows = await self.add(
            [NewSuppression(brand_id, address, "unsubscribed") for brand_id, address in entries],
            source,
        )
        return [row for row in rows if row["created"]]

    async def opt_in(self, brand_ids: Sequence[str], address: str) -> list[asyncpg.Record]:
        """The recipient opted back in: lift their own brand-wide opt-outs of these brands
        (reason `unsubscribed` from RECIPIENT_OPT_OUTS), never what a brand, a bounce or a
        complaint put there. Returns the suppressions it removed: the one place SMS
        opt-outs are lifted."""
        async with self.conn.transaction():
            rows: list[asyncpg.Record] = await self.conn.fetch(
                f"""
                DELETE FROM suppressions
                WHERE brand_id = ANY($1::text[]) AND address = $2 AND topic = '{BRAND_WIDE}'
                  AND reason = 'unsubscribed' AND source = ANY($3::text[])
                RETURNING brand_id, address, NULL AS topic, reason, source, run_id
                """,
                list(brand_ids),
                address,
                list(RECIPIENT_OPT_OUTS),
            )
            await record_audit(self.conn, *_deleted(rows, RECIPIENT))
        return rows


def _created(rows: Sequence[asyncpg.Record], source: Source, actor: str) -> list[AuditEvent]:
    """The audit rows of `add`: each new suppression, and each whose reason or source a
    PUT changed (the caller's word now)."""
    events = []
    for row in rows:
        if row["created"]:
            old = None
        elif row["written"]:
            old = {"reason": row["old_reason"], "source": row["old_source"], "run_id": None}
        else:
            continue
        new = {"reason": row["reason"], "source": source, "run_id": row["run_id"]}
        if changes := changes_between(old, new, AUDITED_FIELDS):
            events.append(_event(row, actor, "suppression.created", changes))
    return events


def _deleted(rows: Sequence[asyncpg.Record], actor: str) -> list[AuditEvent]:
    """The audit rows of suppressions removed: what each was."""
    return [
        _event(row, actor, "suppression.deleted", changes_between(row, None, AUDITED_FIELDS))
        for row in rows
    ]


def _event(row: asyncpg.Record, actor: str, action: Action, changes: dict[str, Any]) -> AuditEvent:
    """The address is the target (docs/ops.md reads a suppression's trail by it); its
    `topic` (null: brand-wide) is always in `changes`, since the address alone does not
    name the suppression."""
    changes = {**changes, "topic": row["topic"]}
    return AuditEvent(row["brand_id"], actor, action, "suppression", row["address"], changes)


async def _record_events(
    created: list[asyncpg.Record], source: str, conn: asyncpg.Connection
) -> None:
    """A `suppression.created` event per new row, in its brand's stream."""
    by_brand: dict[str, list[tuple[str, dict[str, object]]]] = {}
    for row in created:
        data = {
            "brand_id": row["brand_id"],
            "recipient": row["address"],
            "topic": row["topic"],
            "reason": row["reason"],
            "source": source,
        }
        by_brand.setdefault(row["brand_id"], []).append((SUPPRESSION_CREATED, data))
    events = EventRepository(conn)
    for brand_id, brand_events in by_brand.items():
        await events.record(brand_stream(brand_id), brand_events)
