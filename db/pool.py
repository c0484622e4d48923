"""The asyncpg pool and the codecs every connection of it shares."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import msgspec

logger = logging.getLogger(__name__)

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

# The narrower set of errors that say "the database is away or busy, try again" rather than
# "this statement is wrong": a lost or refused connection, a server shutting down or
# starting, a cancelled statement, a deadlock or serialization failure, too many clients.
# A delivery window that fails this way is retried without spending attempts; web answers
# 503 with Retry-After. Any other error is deterministic: trying again would fail again.
DATABASE_AWAY = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,  # 08: connection exceptions
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutdown, starting up, cancelled
    asyncpg.exceptions.TransactionRollbackError,  # 40: deadlock, serialization failure
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.exceptions.PostgresSystemError,  # 58: I/O error
    # 55000: "database ... is not currently accepting connections" (ALLOW_CONNECTIONS off)
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
)


def database_away(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from (procrastinate wraps ours in its
    ConnectorException), is one of DATABASE_AWAY."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DATABASE_AWAY):
            return True
        seen = seen.__cause__
    return False


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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection given back, beyond what asyncpg always does (roll
    back an open transaction, forget listeners): nothing. asyncpg's default sends `SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`, a round trip per release,
    for session state this service never leaves: its advisory locks and settings are all
    transaction-scoped, it opens no cursor outside a transaction, and the one LISTEN
    connection takes its listeners off itself (db/procrastinate.py)."""


# asyncpg's Pool.close() waits for every connection still checked out, for ever: a task that
# never gives one back would hold a worker's stop, or the web process's, as long.
POOL_CLOSE_SECONDS = 10.0

# asyncpg waits 60 s for a new connection by default: long enough to hold up a worker's
# shutdown, or every request, while the database is unreachable.
CONNECT_TIMEOUT_SECONDS = 5.0


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    server_settings: dict[str, str] | None = None,
) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        timeout=CONNECT_TIMEOUT_SECONDS,
        server_settings=server_settings,
    )
    return pool


async def close_pool(pool: asyncpg.Pool, seconds: float = POOL_CLOSE_SECONDS) -> None:
    """Close `pool` once its connections are given back, `seconds` at most; then close
    those still out by force (the server rolls back what they had open)."""
    try:
        await asyncio.wait_for(pool.close(), seconds)
    except TimeoutError:  # close() terminated the pool as it was cancelled
        logger.warning("database connections still in use after %.0f s: closed by force", seconds)


async def connect(dsn: str) -> asyncpg.Connection:
    """A single connection with the pool's codecs (tests, scripts)."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn
