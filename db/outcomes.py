"""SQL of delivery outcomes: what providers report after a send (delivered, undelivered,
bounced, complained), and the suppressions that bounces and complaints add."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

OUTCOME_RANK = ["delivered", "undelivered", "bounced", "complained"]
"""An outcome only ever moves up this list: a late `delivered` never hides a bounce or an
undelivered text, and a replay changes nothing."""


@dataclass(frozen=True, slots=True)
class ReportedOutcome:
    run_id: UUID
    position: int
    outcome: str
    occurred_at: datetime
    detail: str | None


class OutcomeRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def apply(self, reports: Sequence[ReportedOutcome]) -> list[asyncpg.Record]:
        """Set each reported outcome that ranks above the delivery's current one. Returns
        one row per report whose delivery exists: run_id, position, outcome, recipient,
        brand_id, channel, and `changed` (whether this call set the outcome)."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            """
            WITH reported AS (
                SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[],
                                     $5::text[])
                    AS e(run_id, position, outcome, occurred_at, detail)
            ), found AS MATERIALIZED (
                -- Locked in key order: two bodies naming the same deliveries wait for
                -- each other instead of deadlocking.
                SELECT e.*, d.recipient, r.brand_id, c.channel
                FROM reported e
                JOIN deliveries d ON d.run_id = e.run_id AND d.position = e.position
                JOIN runs r ON r.id = e.run_id
                JOIN campaigns c ON c.id = r.campaign_id
                ORDER BY e.run_id, e.position
                FOR UPDATE OF d
            ), changed AS (
                UPDATE deliveries d SET
                    outcome = f.outcome, outcome_at = f.occurred_at, outcome_detail = f.detail
                FROM found f
                WHERE d.run_id = f.run_id AND d.position = f.position
                  AND array_position($6::text[], f.outcome)
                      > coalesce(array_position($6::text[], d.outcome), 0)
                RETURNING d.run_id, d.position
            )
            SELECT f.run_id, f.position, f.outcome, f.recipient, f.brand_id, f.channel,
                   c.run_id IS NOT NULL AS changed
            FROM found f LEFT JOIN changed c USING (run_id, position)
            """,
            [r.run_id for r in reports],
            [r.position for r in reports],
            [r.outcome for r in reports],
            [r.occurred_at for r in reports],
            [r.detail for r in reports],
            OUTCOME_RANK,
        )
        return rows
