"""Per-request dependencies: a pooled connection and the authenticated caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from litestar import Request
from litestar.datastructures import State

from app.auth import AccessToken


async def provide_connection(state: State) -> AsyncIterator[asyncpg.Connection]:
    pool: asyncpg.Pool = state.pool
    async with pool.acquire() as conn:
        yield conn


def provide_caller(request: Request[str, AccessToken, Any]) -> AccessToken:
    return request.auth


