"""How a receipt finds its delivery by Twilio's sid, and what that costs the record
(docs/adr/0063): the table of sends awaiting a receipt (`awaited_receipts`, the choice)
against a partial index over deliveries.provider_message_id (the alternative), beside the
record's UPDATE with neither.

    python3 -m uv run --frozen python bench/receipts.py [--recipients 50000] [--rounds 4]

Uses the database `messaging_bench_receipts` (BENCH_DATABASE_URL names another), created
and migrated if missing and emptied. One run of N SMS recipients is published once; each
round, in an order that changes by round, every variant sets the run back to pending and
then records it the way a window does, 32 deliveries a statement, each `sent` with a
random sid (Twilio's are random), timed inside PostgreSQL (a plpgsql loop: no client,
no network in the figure):
- neither: the UPDATE of deliveries alone (what a provider without receipts costs);
- index: the same UPDATE with deliveries_provider_message_id_idx
  (`WHERE provider_message_id IS NOT NULL`) in place, holding the sids of every run so far;
- table: the UPDATE, and the INSERT of the 32 sids into awaited_receipts, as the record
  does; a receipt then takes (DELETE ... RETURNING) its row: timed too.
Then the lookup of a sid: `take` from awaited_receipts, and through the index.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/messaging_bench_receipts"
)

import asyncpg  # noqa: E402

from app.domain.schemas import Recipient  # noqa: E402
from app.http.auth import AccessToken  # noqa: E402
from app.services.publishing import publish_campaign  # noqa: E402
from bench.publish import prepare_database  # noqa: E402
from db.pool import connect  # noqa: E402
from db.receipts import ReceiptRepository  # noqa: E402

INDEX = """
    CREATE INDEX IF NOT EXISTS deliveries_provider_message_id_idx
        ON deliveries (provider_message_id) WHERE provider_message_id IS NOT NULL
"""
RECORD = """
CREATE OR REPLACE FUNCTION pg_temp.record(r uuid, n int, awaited bool) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz := clock_timestamp();
    sids text[];
BEGIN
    FOR w IN 0..(n / 32 - 1) LOOP
        sids := ARRAY(SELECT 'SM' || md5(random()::text) FROM generate_series(1, 32));
        UPDATE deliveries d SET status = 'sent', provider_message_id = s.sid,
               sent_at = now(), updated_at = now()
        FROM unnest(sids) WITH ORDINALITY AS s(sid, k)
        WHERE d.run_id = r AND d.position BETWEEN w * 32 AND w * 32 + 31
          AND d.position = w * 32 + s.k - 1;
        IF awaited THEN
            INSERT INTO awaited_receipts (message_id, run_id, position)
            SELECT s.sid, r, w * 32 + s.k - 1 FROM unnest(sids) WITH ORDINALITY AS s(sid, k);
        END IF;
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - started) * 1000 / (n / 32);
END $$;
"""
TAKE_ALL = """
CREATE OR REPLACE FUNCTION pg_temp.take_all(r uuid) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz := clock_timestamp();
    taken int := 0;
    sid text;
BEGIN
    FOR sid IN SELECT message_id FROM awaited_receipts WHERE run_id = r ORDER BY random() LOOP
        DELETE FROM awaited_receipts WHERE message_id = sid;
        taken := taken + 1;
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - started) * 1000 / greatest(taken, 1);
END $$;
"""


async def publish(conn: asyncpg.Connection, n: int) -> uuid.UUID:
    campaign_id = await conn.fetchval(
        "INSERT INTO campaigns (brand_id, name, channel, status, body, created_by, sender)"
        " VALUES ('bench', 'bench', 'sms', 'active', 'Hello', 'bench', '+15550000000')"
        " RETURNING id"
    )
    caller = AccessToken(exp=datetime(2099, 1, 1, tzinfo=UTC), sub="bench", brands=["*"])
    recipients = [Recipient(f"p{i}", f"+1555{i:07d}") for i in range(n)]
    run = await publish_campaign(
        conn, str(campaign_id), recipients, caller, max_recipients=n, batch_size=500
    )
    return run.id


async def timed(conn: asyncpg.Connection, query: str, *args: object, times: int) -> list[float]:
    took = []
    for _ in range(times):
        started = time.perf_counter()
        await conn.fetchval(query, *args)
        took.append((time.perf_counter() - started) * 1000)
    return took


async def main(recipients: int, rounds: int) -> None:
    await prepare_database(DATABASE_URL)
    conn = await connect(DATABASE_URL)
    figures: dict[str, list[float]] = {"neither": [], "index": [], "table": [], "take": []}
    try:
        await conn.execute(
            "TRUNCATE procrastinate_jobs, deliveries, runs, awaited_receipts CASCADE;"
            " DROP INDEX IF EXISTS deliveries_provider_message_id_idx"
        )
        run_id = await publish(conn, recipients)
        await conn.execute(RECORD + TAKE_ALL)
        variants = ["neither", "index", "table"]
        for round_number in range(1, rounds + 1):
            random.Random(round_number).shuffle(variants)
            for variant in variants:
                await conn.execute("DROP INDEX IF EXISTS deliveries_provider_message_id_idx")
                if variant == "index":
                    await conn.execute(INDEX)
                await conn.execute(
                    "UPDATE deliveries SET status = 'pending', provider_message_id = NULL"
                    " WHERE run_id = $1",
                    run_id,
                )
                await conn.execute("VACUUM ANALYZE deliveries")
                await conn.execute("VACUUM ANALYZE awaited_receipts")
                ms = await conn.fetchval(
                    "SELECT pg_temp.record($1, $2, $3)", run_id, recipients, variant == "table"
                )
                figures[variant].append(ms)
                line = f"round {round_number}: {variant:>7}: {ms:.3f} ms a window of 32"
                if variant == "table":
                    take = await conn.fetchval("SELECT pg_temp.take_all($1)", run_id)
                    figures["take"].append(take)
                    line += f"; a receipt's take {take * 1000:.1f} us"
                print(line, flush=True)
        # The lookups, from the client as a receipt makes them (one statement each).
        await conn.execute(INDEX)
        await conn.execute("SELECT pg_temp.record($1, $2, true)", run_id, recipients)
        sids = [
            r["message_id"]
            for r in await conn.fetch("SELECT message_id FROM awaited_receipts ORDER BY random()")
        ][:1000]
        by_index = []
        for sid in sids:
            started = time.perf_counter()
            await conn.fetchrow(
                "SELECT run_id, position FROM deliveries"
                " WHERE provider_message_id = $1 AND provider_message_id IS NOT NULL",
                sid,
            )
            by_index.append((time.perf_counter() - started) * 1000)
        by_table = []
        receipts = ReceiptRepository(conn)
        for sid in sids:
            started = time.perf_counter()
            await receipts.take(sid)
            by_table.append((time.perf_counter() - started) * 1000)
        partitions = await conn.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'deliveries'::regclass"
        )
        await conn.execute("DROP INDEX deliveries_provider_message_id_idx")
    finally:
        await conn.close()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(f"\nmedians of {rounds} rounds ({recipients} deliveries recorded a round):")
    for variant in ("neither", "index", "table"):
        ratio = medians[variant] / medians["neither"]
        print(f"{variant:>8}: {medians[variant]:.3f} ms a window of 32, {ratio:.2f}x neither")
    print(f"{'take':>8}: {medians['take'] * 1000:.1f} us a receipt (server-side)")
    print(
        f"lookup from the client, median of {len(sids)}: awaited_receipts"
        f" {statistics.median(by_table):.3f} ms; the index over {partitions} partitions"
        f" {statistics.median(by_index):.3f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=4)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.recipients, arguments.rounds))
