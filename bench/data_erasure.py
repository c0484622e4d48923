"""Where recipients' data is kept, and what erasing it (DELIVERY_DATA_DAYS) costs: the side
table `delivery_data` beside `deliveries` with its data inside.

    python3 -m uv run --frozen python bench/data_erasure.py [--runs 20] [--size 10000] [--rounds 3]

On the bench database (BENCH_DATABASE_URL; its runs and deliveries are emptied), each
round makes `--runs` ended runs of `--size` deliveries, each with 300 bytes of `data`,
twice: as a publish stores them (`deliveries`, and their data in `delivery_data`), and in
a copy of `deliveries` with a `data` column (the design ADR 0060 weighs). Then, per 1,000
deliveries:
- erasure: the maintenance's (jobs/retention.py: DELETE from delivery_data by primary-key
  ranges of ERASE_BATCH, run by run) beside an UPDATE ... SET data = NULL of the same
  ranges of the copy;
- publish's writes: COPY into deliveries + COPY into delivery_data, beside one COPY into
  the copy with its data column;
- a worker's writes: the WAL of a claim and a record of every delivery of one run (two
  UPDATEs of 32 rows at a time, as jobs/delivery.py makes them), in both tables.
Medians of `--rounds`; then the plans of the erasure's statements.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import msgspec  # noqa: E402

from bench.deliver import DATABASE_URL, reset  # noqa: E402
from bench.publish import prepare_database, recipient_data  # noqa: E402
from db.pool import connect, create_pool  # noqa: E402
from jobs.retention import ERASE_BATCH, maintain_deliveries  # noqa: E402

DAYS = timedelta(days=7)
COLUMNS = ("run_id", "position", "person_id", "recipient", "status", "reason")
INLINE = "bench_inline_deliveries"
WINDOW = 32


def raw(i: int) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode(recipient_data(i)))


def rows(run_id: uuid.UUID, size: int, status: str) -> list[tuple[object, ...]]:
    return [(run_id, i, f"p{i}", f"u{i}@example.com", status, None) for i in range(size)]


async def publish_like(conn: asyncpg.Connection, run_id: uuid.UUID, size: int) -> None:
    """What publish writes: the deliveries, and their data apart."""
    await conn.copy_records_to_table(
        "deliveries", records=rows(run_id, size, "pending"), columns=COLUMNS
    )
    data = [(run_id, i, raw(i)) for i in range(size)]
    await conn.copy_records_to_table("delivery_data", records=data)


async def inline_like(conn: asyncpg.Connection, run_id: uuid.UUID, size: int) -> None:
    """The alternative: the data inside each delivery."""
    records = [(*row, raw(i)) for i, row in enumerate(rows(run_id, size, "pending"))]
    await conn.copy_records_to_table(INLINE, records=records, columns=(*COLUMNS, "data"))


async def new_run(conn: asyncpg.Connection, campaign_id: uuid.UUID, size: int) -> uuid.UUID:
    ended = datetime.now(UTC) - DAYS - timedelta(hours=1)
    run_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO runs (campaign_id, brand_id, status, total_recipients, sent_count,"
        " created_by, completed_at, with_data) VALUES ($1, 'bench', 'completed', $2, $2,"
        " 'bench', $3, true) RETURNING id",
        campaign_id,
        size,
        ended,
    )
    return run_id


async def erase_inline(conn: asyncpg.Connection, run_ids: list[uuid.UUID], size: int) -> None:
    for run_id in run_ids:
        for first in range(0, size, ERASE_BATCH):
            await conn.execute(
                f"UPDATE {INLINE} SET data = NULL"
                " WHERE run_id = $1 AND position BETWEEN $2 AND $3 AND data IS NOT NULL",
                run_id,
                first,
                first + ERASE_BATCH - 1,
            )


async def worker_wal(conn: asyncpg.Connection, table: str, run_id: uuid.UUID, size: int) -> int:
    """WAL bytes of a claim and a record of each delivery of the run, a window at a time."""
    before = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
    for first in range(0, size, WINDOW):
        last = first + WINDOW - 1
        await conn.execute(
            f"UPDATE {table} SET attempts = attempts + 1, claim = $2,"
            " claimed_until = now() + interval '30 seconds'"
            " WHERE run_id = $1 AND position BETWEEN $3 AND $4",
            run_id, uuid.uuid4(), first, last,
        )  # fmt: skip
        await conn.execute(
            f"UPDATE {table} SET status = 'sent', sent_at = now(), claim = NULL,"
            " claimed_until = NULL, updated_at = now()"
            " WHERE run_id = $1 AND position BETWEEN $2 AND $3",
            run_id, first, last,
        )  # fmt: skip
    return int(await conn.fetchval("SELECT pg_current_wal_insert_lsn() - $1::pg_lsn", before))


async def main(runs: int, size: int, rounds: int) -> None:
    await prepare_database(DATABASE_URL)
    conn = await connect(DATABASE_URL)
    pool = await create_pool(DATABASE_URL, min_size=1, max_size=2)
    await conn.execute(
        f"DROP TABLE IF EXISTS {INLINE};"
        f" CREATE TABLE {INLINE} (LIKE deliveries INCLUDING ALL);"
        f" ALTER TABLE {INLINE} ADD COLUMN data jsonb"
    )
    figures: dict[str, list[float]] = {
        "erase: DELETE FROM delivery_data (chosen)": [],
        "erase: UPDATE deliveries SET data = NULL": [],
        "publish: COPY deliveries + delivery_data": [],
        "publish: COPY deliveries with data inside": [],
        "worker: WAL kB, data apart (chosen)": [],
        "worker: WAL kB, data inside": [],
    }
    try:
        for round_number in range(1, rounds + 1):
            await reset(conn)
            await conn.execute(f"TRUNCATE delivery_data, {INLINE}")
            campaign_id = await conn.fetchval(
                "INSERT INTO campaigns (brand_id, name, channel, status, subject, body,"
                " created_by) VALUES ('bench', 'bench', 'email', 'active', 's', 'b', 'bench')"
                " RETURNING id"
            )
            run_ids = [await new_run(conn, campaign_id, size) for _ in range(runs)]
            thousands = size / 1000
            for run_id in run_ids:
                started = time.perf_counter()
                await publish_like(conn, run_id, size)
                apart = time.perf_counter() - started
                started = time.perf_counter()
                await inline_like(conn, run_id, size)
                inside = time.perf_counter() - started
                figures["publish: COPY deliveries + delivery_data"].append(apart / thousands)
                figures["publish: COPY deliveries with data inside"].append(inside / thousands)
            await conn.execute(f"VACUUM ANALYZE runs, delivery_data, {INLINE}")
            await conn.execute("ANALYZE deliveries")
            wal_apart = await worker_wal(conn, "deliveries", run_ids[0], size)
            wal_inside = await worker_wal(conn, INLINE, run_ids[0], size)
            figures["worker: WAL kB, data apart (chosen)"].append(wal_apart / 1000 / thousands)
            figures["worker: WAL kB, data inside"].append(wal_inside / 1000 / thousands)

            total = runs * thousands
            started = time.perf_counter()
            report = await maintain_deliveries(pool, None, data_retention=DAYS)
            chosen = time.perf_counter() - started
            assert report.erased_runs == runs, report
            figures["erase: DELETE FROM delivery_data (chosen)"].append(chosen / total)
            started = time.perf_counter()
            await erase_inline(conn, run_ids, size)
            inside_erase = time.perf_counter() - started
            figures["erase: UPDATE deliveries SET data = NULL"].append(inside_erase / total)
            print(f"round {round_number} done", flush=True)
        run_id = await conn.fetchval("SELECT id FROM runs LIMIT 1")
        plans = [
            await conn.fetch(
                "EXPLAIN SELECT id, total_recipients FROM runs WHERE with_data"
                " AND data_erased_at IS NULL AND completed_at < now() ORDER BY completed_at"
                " LIMIT 100"
            ),
            await conn.fetch(
                "EXPLAIN DELETE FROM delivery_data WHERE run_id = $1"
                " AND position BETWEEN 0 AND 4999",
                run_id,
            ),
        ]
    finally:
        await pool.close()
        await conn.close()
    print(f"\n{runs} runs of {size} deliveries a round; medians of {rounds} rounds, per 1,000:")
    for name, values in figures.items():
        unit = "kB" if "WAL" in name else "ms"
        scale = 1 if "WAL" in name else 1000
        print(f"{name:>45}: {statistics.median(values) * scale:8.2f} {unit}")
    for plan in plans:
        print("\n".join(row[0] for row in plan))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs, arguments.size, arguments.rounds))
