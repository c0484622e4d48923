"""Test databases used again (tests/databases.py): what a test leaves in its copy is gone
for the next test, and a copy changed beyond its rows is not used again."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from app.http.asgi import create_app
from db.pool import connect
from tests.conftest import Copies
from tests.databases import emptied, shape_of
from tests.helpers import create_campaign, publish, recipients
from tests.waiting import GONE

TABLES = """
SELECT c.oid::regclass::text FROM pg_class c
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
   AND NOT c.relispartition
"""


async def test_an_emptied_copy_holds_nothing_a_test_left(database_url, settings, copies: Copies):
    """Rows in every kind of table (the append-only audit's too), sequences moved on,
    statistics of an ANALYZE, and a session still open: all gone, and the copy is as the
    template made it."""
    # The app stops before the copy is emptied, as a test's fixtures stop before it is
    # given back (its pool would connect again as fast as its connections are ended).
    async with AsyncTestClient(app=create_app(settings)) as client:
        campaign = await create_campaign(client)
        published = await publish(client, campaign["id"], {"recipients": recipients(3)})
    assert published.status_code == 202, published.text
    left_open = await connect(database_url)  # a session the test did not close
    counts = await row_counts(left_open)
    assert counts["audit_events"] and counts["deliveries"] == 3 and counts["procrastinate_jobs"]
    await left_open.execute("ANALYZE")
    assert await statistics(left_open)

    assert await asyncio.to_thread(emptied, database_url, copies.shape, GONE)

    assert left_open.is_closed() or not await alive(left_open)
    conn = await connect(database_url)
    try:
        counts = await row_counts(conn)
        assert {t: n for t, n in counts.items() if n} == {"alembic_version": 1}
        assert await conn.fetchval("SELECT nextval('procrastinate_jobs_id_seq')") == 1
        assert await statistics(conn) == 0
    finally:
        await conn.close()
    assert await asyncio.to_thread(shape_of, database_url) == copies.shape


@pytest.mark.parametrize(
    "change",
    [
        "CREATE TABLE left_behind (n int)",
        "ALTER TABLE campaigns ADD COLUMN left_behind int",
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET work_mem = ''8MB''',"
        " current_database()); END $$",
        "CREATE INDEX left_behind ON campaigns (name)",
    ],
    ids=["table", "column", "setting", "index"],
)
async def test_a_copy_changed_beyond_its_rows_is_left_as_it_is(
    database_url, copies: Copies, change
):
    conn = await connect(database_url)
    try:
        await conn.execute(change)
    finally:
        await conn.close()

    assert not await asyncio.to_thread(emptied, database_url, copies.shape, GONE)
    assert await asyncio.to_thread(shape_of, database_url) != copies.shape


async def row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Every table's rows (a partitioned table's are its partitions')."""
    names = [row[0] for row in await conn.fetch(TABLES)]
    return {name: await conn.fetchval(f"SELECT count(*) FROM {name}") for name in names}


async def statistics(conn: asyncpg.Connection) -> int:
    """Columns of this database's tables that ANALYZE has statistics of."""
    return await conn.fetchval(
        "SELECT count(*) FROM pg_statistic s JOIN pg_class c ON c.oid = s.starelid"
        " WHERE c.relnamespace = 'public'::regnamespace"
    )


async def alive(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    return True
