"""Test databases: one template migrated with Alembic per test session, a copy of it for
every test (pytest-postgresql's janitor), on the real PostgreSQL: made one test ahead,
emptied or dropped behind, in threads (`Copies`)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import replace

import asyncpg
import pytest
import uvicorn
from alembic import command
from alembic.config import Config
from litestar import Litestar
from litestar.testing import AsyncTestClient
from pytest_postgresql.janitor import DatabaseJanitor

from app.core.settings import Settings
from app.http.asgi import create_app
from db.pool import connect
from tests.databases import database_settings, emptied, set_database_settings, shape_of
from tests.fakes.smtp import SmtpSink
from tests.fakes.webhook import HttpSink
from tests.tokens import TEST_SECRET, UNSUBSCRIBE_SECRET
from tests.waiting import GONE, await_chain
from tests.web import WebProcess, web_process

PUBLIC_BASE_URL = "https://messaging.test"
WEBHOOK_SECRET = "webhook-secret"

PG_HOST = os.environ.get("PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PGPORT", "5432"))
PG_USER = os.environ.get("PGUSER", "postgres")
# Unique per test process, so that parallel runs on one server do not collide.
PREFIX = f"messaging_test_{os.getpid()}"
_numbers = itertools.count()


def pytest_collection_finish(session: pytest.Session) -> None:
    """What the modules, the collected tests and their libraries built lives as long as
    this process: out of the garbage collector's reach, so that its full collections do
    not scan it again and again (about 220 of them in a run of the suite took 69 s of
    the test processes' time, 39 s with this; latencies a test measures hold the collector
    off too: `tests.waiting.collector_held_off`)."""
    gc.collect()
    gc.freeze()


def url_of(dbname: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


def _janitor(dbname: str, **kwargs: object) -> DatabaseJanitor:
    return DatabaseJanitor(
        user=PG_USER,
        host=PG_HOST,
        port=PG_PORT,
        dbname=dbname,
        **kwargs,  # type: ignore[arg-type]
    )


def alembic_config(database_url: str) -> Config:
    config = Config(os.path.join(os.path.dirname(__file__), "..", "alembic.ini"))
    config.attributes["database_url"] = database_url
    return config


@pytest.fixture(autouse=True)
async def tasks_shown_if_hung(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A hung test ends at pytest-timeout's limit with the stack of the event loop's select(),
    which names no coroutine; shortly before, print every task's stack (captured stderr)."""
    limit = timeout_of(request)
    handle = asyncio.get_running_loop().call_later(limit * 0.9, _print_tasks)
    yield
    handle.cancel()


def timeout_of(request: pytest.FixtureRequest) -> float:
    """pytest-timeout's limit for this test: its own `timeout` mark, else the ini's."""
    mark = request.node.get_closest_marker("timeout")
    return float(mark.args[0] if mark else request.config.getini("timeout"))


def _print_tasks() -> None:
    for task in asyncio.all_tasks():
        print(f"task {task.get_name()}, awaiting:\n{await_chain(task)}", file=sys.stderr)


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    name = f"{PREFIX}_template"
    with _janitor(name):
        command.upgrade(alembic_config(url_of(name)), "head")
        yield name


class Drops:
    """Test databases dropped behind the tests, in threads: DROP DATABASE waits for two
    checkpoints of the whole server (measured: 0.1 s on a quiet machine, 1.8-2.3 s while
    the suite's other processes write; a migration test's teardown took 69 s at load 10).
    Concurrent drops share their checkpoints."""

    def __init__(self) -> None:
        self.dropping = ThreadPoolExecutor(4, thread_name_prefix="drop-database")
        self.drops: list[Future[None]] = []

    def drop(self, name: str) -> None:
        self.drops.append(self.dropping.submit(_janitor(name).drop))

    def close(self) -> None:
        """Wait for every drop; a failed one fails the session."""
        self.dropping.shutdown()
        for drop in self.drops:
            drop.result()


class Copies:
    """Copies of the migrated template for this test process, with its database settings.
    A used copy is emptied for a later test if only its rows changed, else dropped
    (`tests.databases`, `Drops`); a new one is made ahead while a test runs (0.1 s), for
    when no emptied one is ready. No test waits for any of it."""

    def __init__(self, template: str, drops: Drops) -> None:
        self.template = template
        self.drops = drops
        self.settings = database_settings(url_of(template))
        self.shape = shape_of(url_of(template))
        self.creating = ThreadPoolExecutor(1, thread_name_prefix="create-database")
        self.next = self.creating.submit(self._create)
        self.emptying = ThreadPoolExecutor(1, thread_name_prefix="empty-database")
        self.emptied: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.given_back: list[Future[None]] = []

    def _create(self) -> str:
        name = f"{PREFIX}_{next(_numbers)}"
        _janitor(name, template_dbname=self.template).init()
        set_database_settings(url_of(name), self.settings)
        return name

    def _empty(self, name: str) -> None:
        if emptied(url_of(name), self.shape, GONE):
            self.emptied.put(name)
        else:
            self.drops.drop(name)

    def take(self) -> str:
        with suppress(queue.Empty):
            return self.emptied.get_nowait()
        name = self.next.result()
        self.next = self.creating.submit(self._create)
        return name

    def give_back(self, name: str) -> None:
        self.given_back.append(self.emptying.submit(self._empty, name))

    def close(self) -> None:
        """Drop the spares (the drops are waited for by `Drops.close`); a failure to empty
        or drop a copy fails the session."""
        self.creating.shutdown()
        self.emptying.shutdown()
        for given_back in self.given_back:
            given_back.result()
        self.drops.drop(self.next.result())
        while not self.emptied.empty():
            self.drops.drop(self.emptied.get_nowait())


@pytest.fixture(scope="session")
def drops() -> Iterator[Drops]:
    drops = Drops()
    yield drops
    drops.close()


@pytest.fixture(scope="session")
def copies(template_database: str, drops: Drops) -> Iterator[Copies]:
    copies = Copies(template_database, drops)
    yield copies
    copies.close()


@contextmanager
def fresh_database(copies: Copies) -> Iterator[str]:
    """A new copy of the migrated template, dropped after; yields its URL."""
    name = copies.take()
    try:
        yield url_of(name)
    finally:
        copies.give_back(name)


@pytest.fixture
def database_url(copies: Copies) -> Iterator[str]:
    with fresh_database(copies) as url:
        yield url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The test's own connection, to arrange and inspect the database."""
    conn = await connect(database_url)
    yield conn
    await conn.close()


def settings_of(database_url: str) -> Settings:
    """The settings every test starts from, on `database_url`."""
    return replace(
        Settings(),
        database_url=database_url,
        jwt_secret=TEST_SECRET,
        public_base_url=PUBLIC_BASE_URL,
        unsubscribe_secrets=UNSUBSCRIBE_SECRET,
    )


@pytest.fixture
def settings(database_url: str) -> Settings:
    return settings_of(database_url)


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app) as client:
        yield client


@contextmanager
def serving(app: Litestar) -> Iterator[str]:
    """`app` behind a real uvicorn server on a free localhost port, in a thread with its
    own event loop: requests to it run truly concurrently, each on its own pooled
    connection (at most DB_POOL_MAX_SIZE of them). Yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # ws="none": the websocket implementations warn on import, and warnings are errors.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", ws="none", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=GONE)
        # uvicorn waits for the requests in flight, then for the app's shutdown (its pool).
        assert not thread.is_alive(), f"the test server did not stop within {GONE:g} s"


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    """`serving` the test's settings, with a pool big enough for any test's concurrency."""
    with serving(create_app(replace(settings, db_pool_max_size=40))) as url:
        yield url


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    """A real local HTTP receiver: the webhook provider's, or an events receiver."""
    with HttpSink() as sink:
        yield sink


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    """A real local mail relay: the SMTP provider's."""
    with SmtpSink() as smtp:
        yield smtp


@pytest.fixture
def webhook_settings(settings: Settings, sink: HttpSink) -> Settings:
    """The test's settings with both channels sent through the webhook provider to `sink`,
    signed with WEBHOOK_SECRET. A module that tunes the workers overrides this fixture."""
    return replace(
        settings,
        email_provider="webhook",
        sms_provider="webhook",
        webhook_url=sink.url,
        webhook_secret=WEBHOOK_SECRET,
    )


@pytest.fixture
async def web(database_url: str) -> AsyncIterator[WebProcess]:
    """The web process as the Procfile starts it, on the test's database."""
    async with web_process(database_url) as web:
        yield web
