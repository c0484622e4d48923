"""SQL of the idempotency_keys table (Idempotency-Key of publish)."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import asyncpg

from db.runs import COLUMNS as RUN_COLUMNS

# Qualified: idempotency_keys shares some column names with runs.
_RUN_COLUMNS = ", ".join(f"r.{column.strip()}" for column in RUN_COLUMNS.split(","))


class IdempotencyKeyRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def claim(
        self,
        *,
        brand_id: str,
        campaign_id: UUID,
        key: str,
        fingerprint: bytes,
        run_id: UUID,
        ttl: timedelta,
        lock_id: int,
    ) -> bool:
        """Claim the key for a new run `run_id`, in the caller's transaction. True if
        this transaction now owns the key; False if another request holds it (in flight:
        the transaction-scoped advisory lock `lock_id` is taken) or it is already used
        and not expired.

        The advisory lock is what tells "in flight" from "done" without waiting: every
        claim takes it first, and a claim holds it until its transaction ends, so no
        uncommitted key row can exist while we hold it, and the unique key decides the
        rest. An expired row is taken over in place (the purge may not have run yet).
        """
        claimed: bool | None = await self.conn.fetchval(
            """
            INSERT INTO idempotency_keys AS k
                (brand_id, campaign_id, key, fingerprint, run_id, expires_at)
            SELECT $1, $2, $3, $4, $5, now() + $6::interval
            WHERE pg_try_advisory_xact_lock($7)
            ON CONFLICT (brand_id, campaign_id, key) DO UPDATE
                SET fingerprint = EXCLUDED.fingerprint, run_id = EXCLUDED.run_id,
                    created_at = now(), expires_at = EXCLUDED.expires_at
                WHERE k.expires_at <= now()
            RETURNING true
            """,
            brand_id,
            campaign_id,
            key,
            fingerprint,
            run_id,
            ttl,
            lock_id,
        )
        return bool(claimed)

    async def original(
        self, *, brand_id: str, campaign_id: UUID, key: str
    ) -> asyncpg.Record | None:
        """The committed, unexpired use of the key: its `fingerprint` and its run's
        columns. None if there is none (yet)."""
        record: asyncpg.Record | None = await self.conn.fetchrow(
            f"""
            SELECT k.fingerprint, {_RUN_COLUMNS}
            FROM idempotency_keys k JOIN runs r ON r.id = k.run_id
            WHERE k.brand_id = $1 AND k.campaign_id = $2 AND k.key = $3
              AND k.expires_at > now()
            """,
            brand_id,
            campaign_id,
            key,
        )
        return record

    async def purge_expired(self, *, batch_size: int = 10_000) -> int:
        """Delete expired keys, `batch_size` rows per statement (short transactions that
        never hold many row locks); returns how many were deleted."""
        deleted = 0
        while True:
            status: str = await self.conn.execute(
                """
                DELETE FROM idempotency_keys
                WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1
                ))
                AND expires_at <= now()  -- rechecked on a row taken over meanwhile
                """,
                batch_size,
            )
            count = int(status.rpartition(" ")[2])
            deleted += count
            if count < batch_size:
                return deleted
