"""SQL of awaited_receipts: the sends whose final receipt the provider has still to post
(Twilio's, named by their sid). Written with the window's record, taken by the receipt,
purged AWAITED_RECEIPT_DAYS after the send; small because it holds only what is in flight
(docs/adr/0063)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from uuid import UUID

import asyncpg

from db.deliveries import MAX_PROVIDER_MESSAGE_ID
from db.text import storable

AWAITED_RECEIPT_DAYS = 7
"""Twilio gives up on a text after its validity period (10 h by default) and carriers'
reports come within 3 days: a receipt later than this is dropped (`200`, ignored)."""


class ReceiptRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def expect(self, run_id: UUID, sent: Sequence[tuple[int, str]]) -> None:
        """The run's deliveries (position, message id) were sent: await their receipts."""
        await self.conn.execute(
            """
            INSERT INTO awaited_receipts (message_id, run_id, position)
            SELECT m, $1, p FROM unnest($2::int[], $3::text[]) AS s(p, m)
            ON CONFLICT (message_id) DO NOTHING
            """,
            run_id,
            [position for position, _ in sent],
            # As deliveries.provider_message_id holds it: an id PostgreSQL refuses as it
            # is must not fail the window's record.
            [storable(message_id, MAX_PROVIDER_MESSAGE_ID) for _, message_id in sent],
        )

    async def take(self, message_id: str) -> tuple[UUID, int] | None:
        """(run_id, position) of the delivery sent as `message_id`, no longer awaited;
        None if it is not (unknown, already taken, or purged)."""
        row = await self.conn.fetchrow(
            "DELETE FROM awaited_receipts WHERE message_id = $1 RETURNING run_id, position",
            message_id,
        )
        return None if row is None else (row["run_id"], row["position"])

    async def purge(self, older_than: timedelta = timedelta(days=AWAITED_RECEIPT_DAYS)) -> int:
        """Forget the sends awaited for longer than `older_than`; returns how many."""
        status: str = await self.conn.execute(
            "DELETE FROM awaited_receipts WHERE sent_at < now() - $1::interval", older_than
        )
        return int(status.split()[-1])
