"""The asyncpg pool and the codecs every connection of it shares."""

from __future__ import annotations

import asyncpg
import msgspec

_JSONB_VERSION = b"\x01"

# What a query can raise when the database is away: refused or cut connections, timeouts,
# and InternalClientError, which asyncpg raises on a pooled connection the server just cut.
DATABASE_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in binary format, so that it can also travel inside composite types and
    # arrays (procrastinate's defer sends an array of a composite with a jsonb field;
    # a text-format codec cannot be used there).
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: _JSONB_VERSION + msgspec.json.encode(value),
        decoder=lambda data: msgspec.json.decode(data[1:]),
        format="binary",
    )


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection
    )
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    """A single connection with the pool's codecs (tests, scripts)."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn
