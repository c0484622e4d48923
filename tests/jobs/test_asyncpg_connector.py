"""The asyncpg connector against the real PostgreSQL and a real procrastinate worker."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from procrastinate import App, exceptions

from db.pool import create_pool
from db.procrastinate import AsyncpgConnector, translate
from tests.conftest import PG_PORT
from tests.waiting import GONE, PATIENCE, within


def test_translate_numbers_each_name_once():
    sql, names = translate("SELECT %(a)s, %(b)s, %(a)s, 'x%%'")
    assert sql == "SELECT $1, $2, $1, 'x%'"
    assert names == ("a", "b")


@pytest.fixture
async def procrastinate_app(database_url):
    app = App(connector=AsyncpgConnector(database_url))
    app.done = []  # type: ignore[attr-defined]
    app.changed = asyncio.Event()  # type: ignore[attr-defined]

    @app.task(name="record", queue="test")
    async def record(n: int) -> None:
        app.done.append(n)  # type: ignore[attr-defined]
        app.changed.set()  # type: ignore[attr-defined]

    async with app.open_async():
        yield app


async def test_defer_on_a_rolled_back_transaction_leaves_no_job(
    procrastinate_app, database_url, db
):
    pool = await create_pool(database_url, min_size=1, max_size=1)
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        ids = (
            await procrastinate_app.tasks["record"]
            .configure(connection=conn)
            .batch_defer_async({"n": 1}, {"n": 2})
        )
        assert len(ids) == 2
        # Not visible to anyone else before commit.
        assert await db.fetchval("SELECT count(*) FROM procrastinate_jobs") == 0
        await tx.rollback()
    await pool.close()

    assert await db.fetchval("SELECT count(*) FROM procrastinate_jobs") == 0


async def test_defer_on_a_committed_transaction_keeps_args(procrastinate_app, database_url, db):
    pool = await create_pool(database_url, min_size=1, max_size=1)
    async with pool.acquire() as conn, conn.transaction():
        await procrastinate_app.tasks["record"].configure(connection=conn).defer_async(n=7)
    await pool.close()

    row = await db.fetchrow("SELECT task_name, queue_name, args FROM procrastinate_jobs")
    assert (row["task_name"], row["queue_name"], row["args"]) == ("record", "test", {"n": 7})


async def test_a_query_stays_prepared_on_its_connection(procrastinate_app, database_url):
    """A defer is one round trip: its statement is the one the connection's statement cache
    prepared, not one prepared and closed at every defer."""
    record = procrastinate_app.tasks["record"]
    pool = await create_pool(database_url, min_size=1, max_size=1)
    async with pool.acquire() as conn, conn.transaction():
        await record.configure(connection=conn).defer_async(n=0)
        statements = "SELECT name FROM pg_prepared_statements WHERE statement LIKE $1"
        first = await conn.fetch(statements, "%procrastinate_defer_jobs%")
        for n in range(1, 4):
            await record.configure(connection=conn).defer_async(n=n)
        later = await conn.fetch(statements, "%procrastinate_defer_jobs%")
    await pool.close()

    assert len(later) >= 1
    assert set(later) <= set(first), (first, later)


async def test_queueing_lock_conflict_is_already_enqueued(procrastinate_app):
    task = procrastinate_app.tasks["record"]
    await task.configure(queueing_lock="only-one").defer_async(n=1)

    with pytest.raises(exceptions.AlreadyEnqueued):
        await task.configure(queueing_lock="only-one").defer_async(n=2)


async def test_rejected_defer_in_a_savepoint_leaves_the_transaction_usable(
    procrastinate_app, database_url, db
):
    task = procrastinate_app.tasks["record"]
    await task.configure(queueing_lock="taken").defer_async(n=1)
    pool = await create_pool(database_url, min_size=1, max_size=1)
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(exceptions.AlreadyEnqueued):
            async with conn.transaction():
                await task.configure(connection=conn, queueing_lock="taken").defer_async(n=2)
        await task.configure(connection=conn).defer_async(n=3)
    await pool.close()

    args = await db.fetch("SELECT args FROM procrastinate_jobs ORDER BY id")
    assert [a["args"]["n"] for a in args] == [1, 3]


async def test_worker_on_this_connector_runs_deferred_jobs(procrastinate_app, db):
    await procrastinate_app.tasks["record"].batch_defer_async({"n": 1}, {"n": 2}, {"n": 3})

    worker = procrastinate_app.run_worker_async(queues=["test"], wait=False)
    await within(PATIENCE, worker, "the worker's end, nothing left due")

    assert sorted(procrastinate_app.done) == [1, 2, 3]
    statuses = await db.fetch("SELECT status FROM procrastinate_jobs")
    assert {s["status"] for s in statuses} == {"succeeded"}


async def test_listening_worker_wakes_up_on_commit(procrastinate_app, db, monkeypatch):
    # procrastinate clears its wake-up after each fetch: a job deferred while the worker's
    # first fetch is under way waits for the next poll (a race of the library's; our
    # workers poll every second). So the job is deferred once the worker LISTENs and its
    # first fetch has found nothing: it then waits for a notification or the poll.
    found_nothing = asyncio.Event()
    fetch_job = procrastinate_app.job_manager.fetch_job

    async def fetch_job_noting_none(**kwargs: Any) -> Any:
        job = await fetch_job(**kwargs)
        if job is None:
            found_nothing.set()
        return job

    monkeypatch.setattr(procrastinate_app.job_manager, "fetch_job", fetch_job_noting_none)
    worker = asyncio.create_task(
        procrastinate_app.run_worker_async(
            queues=["test"], listen_notify=True, fetch_job_polling_interval=60
        )
    )
    try:
        waiting = asyncio.gather(procrastinate_app.connector.listening.wait(), found_nothing.wait())
        await within(PATIENCE, waiting, "the worker's LISTEN and first fetch")
        await procrastinate_app.tasks["record"].defer_async(n=42)

        async with asyncio.timeout(10):  # far less than the 60 s polling interval
            await procrastinate_app.changed.wait()
        assert procrastinate_app.done == [42]
    finally:
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await within(PATIENCE, worker, "the worker's end once cancelled")


class FreezingProxy:
    """A TCP proxy to PostgreSQL whose open connections can be frozen: bytes stop flowing
    both ways but nothing is closed, as on a half-open connection. New connections flow."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.frozen: list[asyncio.Event] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.pipes: list[asyncio.Task[None]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        for flowing in self.frozen:
            flowing.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers += [writer, up_writer]
        flowing = asyncio.Event()
        flowing.set()
        self.frozen.append(flowing)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                await flowing.wait()  # frozen: hold the bytes for ever
                dst.write(data)
                await dst.drain()
            dst.close()

        self.pipes += [
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.pipes:
            task.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


async def test_the_listener_replaces_a_half_open_connection(database_url, db, monkeypatch):
    # The check's timeout, waited in full twice (the check, then the release of the frozen
    # connection): 1 s instead of 5. One that a slow machine crossed on a healthy
    # connection would only make the listener listen again.
    monkeypatch.setattr("db.procrastinate.HEALTH_CHECK_TIMEOUT", 1.0)
    proxy = FreezingProxy(PG_PORT)
    port = await proxy.start()
    connector = AsyncpgConnector(database_url.replace(f":{PG_PORT}/", f":{port}/"))
    connector.listen_check_seconds = 0.2
    await connector.open_async()
    received: list[str] = []
    got = asyncio.Event()

    async def on_notification(*, channel: str, payload: str) -> None:
        received.append(payload)
        got.set()

    listener = asyncio.create_task(connector.listen_notify(on_notification, ["chan"]))
    try:
        async with asyncio.timeout(10):
            while not received:
                await db.execute("NOTIFY chan, 'before'")
                await asyncio.sleep(0.1)
        proxy.freeze()  # the listening connection goes half-open
        got.clear()
        await asyncio.sleep(0.5)
        await db.execute("NOTIFY chan, 'lost'")  # sent into the frozen connection

        # The check times out, the listener listens again on a new connection.
        async with asyncio.timeout(15):
            while "after" not in received:
                await db.execute("NOTIFY chan, 'after'")
                await asyncio.sleep(0.2)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await within(PATIENCE, listener, "the listener's end once cancelled")
        await within(GONE, proxy.close(), "the proxy's close")
        await within(GONE, connector.close_async(), "the connector's pool closed")
    assert received[0] == "before" and "after" in received
