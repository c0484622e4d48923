"""Per-request dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
from litestar.datastructures import State


async def provide_connection(state: State) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection for the request, back to the pool when the response is sent."""
    pool: asyncpg.Pool = state.pool
    async with pool.acquire() as conn:
        yield conn
