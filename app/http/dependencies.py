"""Per-request dependencies."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import asyncpg
from litestar.datastructures import State

from db.pool import DATABASE_AWAY

logger = logging.getLogger(__name__)


async def provide_connection(state: State) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection for the request, back to the pool when the response is made.
    When every connection stays busy for DB_POOL_TIMEOUT_SECONDS, TimeoutError: a 503."""
    pool: asyncpg.Pool = state.pool
    conn = await pool.acquire(timeout=state.settings.db_pool_timeout_seconds)
    try:
        yield conn
    finally:
        try:
            await pool.release(conn)
        except DATABASE_AWAY as exc:
            # The response is decided already (a publish may have committed): a
            # connection the server cut while the pool reset it is the pool's loss (it
            # drops it), never a reason to answer this request with an error.
            logger.warning("a connection could not be reset for reuse: %r", exc)
