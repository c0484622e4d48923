"""db/pool.py's close_pool: a stop of the web or worker process ends even when a
connection is never given back (asyncpg's own close() would wait for it for ever)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from db.pool import close_pool, create_pool
from tests.waiting import PATIENCE


async def test_a_connection_never_given_back_is_closed_by_force_after_the_bound(
    database_url, db, caplog: pytest.LogCaptureFixture
):
    pool = await create_pool(database_url, min_size=1, max_size=2)
    held = await pool.acquire()
    backend = held.get_server_pid()

    started = time.monotonic()
    async with asyncio.timeout(PATIENCE):
        await close_pool(pool, seconds=0.5)

    assert time.monotonic() - started >= 0.5  # it waited for the connection first
    async with asyncio.timeout(PATIENCE):  # the server ended that session
        while await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert "closed by force" in caplog.text


async def test_a_pool_whose_connections_are_back_closes_quietly(
    database_url, caplog: pytest.LogCaptureFixture
):
    pool = await create_pool(database_url, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    with caplog.at_level(logging.WARNING):
        await close_pool(pool, seconds=PATIENCE)
    assert pool.is_closing() and not caplog.records
