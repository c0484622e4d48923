"""A procrastinate connector on asyncpg.

procrastinate ships psycopg connectors only. This one lets the web process defer jobs
on the asyncpg connection that holds the publish transaction
(``task.configure(connection=conn)``), and lets the worker share one asyncpg pool with
the delivery code.

procrastinate writes its SQL with ``%(name)s`` placeholders; they are rewritten once per
query into asyncpg's ``$n``. The pool's connections must carry the binary jsonb codec of
``db.pool`` so that job arguments travel inside procrastinate's composite types.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from procrastinate import connector, exceptions, manager

from db.pool import close_pool, create_pool

logger = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
_TEXT_TYPES = {"text", "varchar", "bpchar", "name"}
# How long the LISTEN connection may take to answer its health check (or to unlisten)
# before it is taken for half-open and replaced; without a bound, the kernel's TCP
# timeouts decide, about 15 minutes.
HEALTH_CHECK_TIMEOUT = 5.0


# The PostgreSQL type names of each query's parameters (procrastinate's queries are a
# fixed set, and their parameters' types are its schema's).
_PARAMETER_TYPES: dict[str, tuple[str, ...]] = {}


@functools.lru_cache(maxsize=256)
def translate(query: str) -> tuple[str, tuple[str, ...]]:
    """``%(name)s`` placeholders to ``$n``; returns the query and the names in $n order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PLACEHOLDER.sub(number, query).replace("%%", "%"), tuple(names)


class AsyncpgConnector(connector.BaseAsyncConnector):
    """`dsn`: for a connector that opens its own pool; the service's connectors never do
    (the worker opens the app on its pool, defers pass their connection)."""

    def __init__(self, dsn: str | None = None, *, min_size: int = 1, max_size: int = 10):
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._pool_externally_set = False
        self.listen_check_seconds = connector.LISTEN_TIMEOUT
        """How often the idle LISTEN connection is checked with `SELECT 1`."""
        self.listening = asyncio.Event()
        """Set while the worker LISTENs: a job deferred from then on is announced to it at
        once, not found by the next poll (what tests wait for before they publish)."""

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise exceptions.AppNotOpen
        return self._pool

    def get_sync_connector(self) -> connector.BaseConnector:
        return self

    async def open_async(self, pool: asyncpg.Pool | None = None) -> None:
        if self._pool is not None:
            return
        if pool is not None:
            self._pool, self._pool_externally_set = pool, True
            return
        if self._dsn is None:
            raise exceptions.AppNotOpen  # no pool given and no DSN to make one
        self._pool = await create_pool(self._dsn, min_size=self._min_size, max_size=self._max_size)

    async def close_async(self) -> None:
        if self._pool is not None and not self._pool_externally_set:
            await close_pool(self._pool)
        self._pool, self._pool_externally_set = None, False

    async def execute_query_async(self, query: str, **arguments: Any) -> None:
        async with self._connection() as conn:
            await self._fetch(conn, query, arguments)

    async def execute_query_one_async(self, query: str, **arguments: Any) -> dict[str, Any]:
        async with self._connection() as conn:
            return _one(await self._fetch(conn, query, arguments))

    async def execute_query_all_async(self, query: str, **arguments: Any) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            return await self._fetch(conn, query, arguments)

    async def execute_query_one_async_with_connection(
        self, connection: asyncpg.Connection, query: str, **arguments: Any
    ) -> dict[str, Any]:
        return _one(await self._fetch(connection, query, arguments))

    async def execute_query_all_async_with_connection(
        self, connection: asyncpg.Connection, query: str, **arguments: Any
    ) -> list[dict[str, Any]]:
        return await self._fetch(connection, query, arguments)

    async def listen_notify(
        self, on_notification: connector.Notify, channels: Iterable[str]
    ) -> None:
        """LISTEN on a dedicated connection; reconnect whenever it is lost."""
        channels = list(channels)
        while True:
            try:
                await self._listen_until_lost(on_notification, channels)
            except Exception as exc:  # procrastinate stops the worker if the listener dies
                logger.warning("listen connection failed, retrying in 1 s: %r", exc)
            await asyncio.sleep(1)

    async def _listen_until_lost(
        self, on_notification: connector.Notify, channels: list[str]
    ) -> None:
        lost = asyncio.Event()
        pending: set[asyncio.Task[None]] = set()

        def forward(_conn: object, _pid: int, channel: str, payload: str) -> None:
            task = asyncio.ensure_future(on_notification(channel=channel, payload=payload))
            pending.add(task)
            task.add_done_callback(_notification_handled)
            task.add_done_callback(pending.discard)

        def on_lost(_conn: object) -> None:
            lost.set()

        # A pool connection, held for as long as it listens.
        conn = await self.pool.acquire()
        try:
            conn.add_termination_listener(on_lost)
            for channel in channels:
                await conn.add_listener(channel, forward)
            self.listening.set()
            logger.info("listening for jobs")
            while not lost.is_set():
                # A cheap query now and then notices a half-open connection.
                try:
                    await asyncio.wait_for(lost.wait(), timeout=self.listen_check_seconds)
                except TimeoutError:
                    await conn.execute("SELECT 1", timeout=HEALTH_CHECK_TIMEOUT)
        finally:
            self.listening.clear()
            # Shielded: the worker cancels this task when it stops, maybe twice; a release
            # cut short would leave the connection checked out and pool.close() waiting.
            await asyncio.shield(self._release_listener(conn, channels, forward, on_lost))

    async def _release_listener(
        self,
        conn: asyncpg.Connection,
        channels: list[str],
        forward: Callable[..., None],
        on_lost: Callable[[object], None],
    ) -> None:
        # The pool refuses (warns about) a connection that still has listeners. A connection
        # the server cut is already detached from its proxy: nothing to remove then. One
        # that does not answer (half-open) is closed: the pool makes a new one when needed.
        try:
            conn.remove_termination_listener(on_lost)
            async with asyncio.timeout(HEALTH_CHECK_TIMEOUT):
                for channel in channels:
                    await conn.remove_listener(channel, forward)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
        await self.pool.release(conn)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except (OSError, asyncpg.InterfaceError) as exc:
            raise exceptions.ConnectorException(str(exc)) from exc

    async def _fetch(
        self, conn: asyncpg.Connection, query: str, arguments: dict[str, Any]
    ) -> list[dict[str, Any]]:
        sql, names = translate(query)
        try:
            types = _PARAMETER_TYPES.get(sql)
            if types is None:
                # Once per query and process: the types of its parameters say how to coerce
                # the arguments. (`prepare` bypasses asyncpg's statement cache: a round
                # trip to prepare, every time, and one more to close.)
                parameters = (await conn.prepare(sql)).get_parameters()
                types = _PARAMETER_TYPES[sql] = tuple(param.name for param in parameters)
            values = [
                _coerce(arguments[name], pg_type)
                for name, pg_type in zip(names, types, strict=True)
            ]
            # Through the connection's statement cache: one round trip once prepared.
            return [dict(row) for row in await conn.fetch(sql, *values)]
        except asyncpg.UniqueViolationError as exc:
            raise _unique_violation(exc) from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise exceptions.ConnectorException(str(exc)) from exc


def _notification_handled(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("a job notification could not be handled", exc_info=error)


def _coerce(value: Any, pg_type: str) -> Any:
    # psycopg sends ints as ints and lets PostgreSQL cast them; asyncpg insists on the
    # Python type of the inferred parameter type (procrastinate sends e.g. `nb_seconds`
    # into `%(nb_seconds)s || 'SECOND'`).
    if pg_type in _TEXT_TYPES and value is not None and not isinstance(value, str):
        return str(value)
    return value


def _one(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        raise exceptions.NoResult
    return rows[0]


def _unique_violation(exc: asyncpg.UniqueViolationError) -> exceptions.UniqueViolation:
    constraint = exc.constraint_name
    queueing_lock = None
    if constraint == manager.QUEUEING_LOCK_CONSTRAINT and exc.detail:
        match = re.search(r"Key \((.*?)\)=\((.*?)\)", exc.detail)
        if match:
            queueing_lock = match.group(2)
    return exceptions.UniqueViolation(constraint_name=constraint, queueing_lock=queueing_lock)
