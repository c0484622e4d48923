"""Prometheus metrics of the web process: `GET /metrics` (text format, no token), or on a
port of its own (METRICS_PORT) that the public network does not reach.

Requests are labelled by route *template* (`/v1/messaging/campaigns/{id}`), never
by raw path, so that ids do not blow up the series. Queue figures (ops_queue_depth) are
read from the database by one supervised background loop every METRICS_REFRESH_SECONDS,
never by a scrape: a scrape costs the same whatever the queue holds and however many
arrive (reading procrastinate_jobs took 110-160 ms at 200,000 jobs, on the API's pool).
A database that is away only lacks those series (messaging_queue_scrape_ok 0).
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections.abc import Callable
from functools import partial
from typing import NoReturn, cast

import asyncpg
from litestar import Response, get
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from app.core import supervision
from db.ops import OpsRepository
from db.pool import DATABASE_UNAVAILABLE

logger = logging.getLogger(__name__)

SCRAPE_DB_TIMEOUT = 2.0
"""Seconds a round of queue figures waits for the database (a connection, then the query)."""

HTTP_REQUESTS = Counter(
    "messaging_http_requests",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "messaging_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_JOBS = Gauge(
    "messaging_queue_jobs", "procrastinate jobs per queue and status.", ["queue", "status"]
)
QUEUE_OLDEST_WAITING = Gauge(
    "messaging_queue_oldest_waiting_seconds",
    "How long the oldest due `todo` job of the queue has waited; 0 when none waits.",
    ["queue"],
)
QUEUE_SCRAPE_OK = Gauge(
    "messaging_queue_scrape_ok",
    "1 if the last round of queue figures (every METRICS_REFRESH_SECONDS) read the database.",
)


def metrics_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_with_status)
        except HTTPException as exc:  # answered by the app's exception handlers, outside
            status = exc.status_code
            raise
        finally:
            route = scope.get("path_template") or "unmatched"
            method = cast("HTTPScope", scope)["method"]
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(method, route, str(status)).inc()

    return middleware


async def refresh_queue_metrics(pool: asyncpg.Pool) -> None:
    """One round of the queue figures (`keep_queue_metrics`)."""
    try:
        async with asyncio.timeout(SCRAPE_DB_TIMEOUT), pool.acquire() as conn:
            rows = await OpsRepository(conn).queue_depth()
    except DATABASE_UNAVAILABLE as exc:
        logger.warning("metrics: queue depth unavailable: %s", type(exc).__name__)
        QUEUE_JOBS.clear()
        QUEUE_OLDEST_WAITING.clear()
        QUEUE_SCRAPE_OK.set(0)
        return
    # Cleared first: a queue/status pair that has no job any more must not keep its value.
    QUEUE_JOBS.clear()
    QUEUE_OLDEST_WAITING.clear()
    for row in rows:
        # Every queue the database knows has the series, 0 when nothing waits: an alert
        # on it sees a value, not an absence.
        QUEUE_OLDEST_WAITING.labels(row["queue_name"]).inc(0)
        QUEUE_JOBS.labels(row["queue_name"], row["status"]).set(row["jobs"])
        if row["status"] == "todo":
            QUEUE_OLDEST_WAITING.labels(row["queue_name"]).set(row["oldest_waiting_seconds"] or 0.0)
    QUEUE_SCRAPE_OK.set(1)


async def keep_queue_metrics(pool: asyncpg.Pool, seconds: float) -> NoReturn:
    """The queue figures now, then every `seconds`, for ever: the one place that reads
    them (a round that fails is logged, and the next one runs)."""
    try:
        await refresh_queue_metrics(pool)
    except Exception:
        logger.exception("metrics: the first round of queue figures failed")
    await supervision.every(seconds, partial(refresh_queue_metrics, pool), name="queue metrics")


def start_queue_metrics(pool: asyncpg.Pool, seconds: float) -> asyncio.Task[object]:
    """The supervised task of `keep_queue_metrics`. It ends only if something other than
    an Exception escapes it; then the process stops (SIGTERM: uvicorn's graceful
    shutdown), so that the platform starts a healthy one, rather than serve figures
    that never change again."""
    return supervision.start(
        keep_queue_metrics(pool, seconds),
        name="queue metrics",
        on_death=lambda: signal.raise_signal(signal.SIGTERM),
    )


def serve_metrics_port(port: int) -> Callable[[], None]:
    """/metrics on `port`, in prometheus-client's server thread; returns its stop."""
    server, thread = start_http_server(port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop


class MetricsText:
    """The registry's text, rendered at most once every `seconds`: rendering takes 1-2 ms
    of event loop (every route's series), and /metrics on the API's port is anyone's to
    call as often as they like. A scrape gets figures at most `seconds` older than
    Prometheus's interval (15 s and more) would anyway allow."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._rendered_at = -math.inf
        self._text = b""

    def latest(self) -> bytes:
        now = time.monotonic()
        if now - self._rendered_at >= self.seconds:
            self._text, self._rendered_at = generate_latest(REGISTRY), now
        return self._text


@get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response[bytes]:
    """Prometheus text format: this process's counters and the latest queue figures."""
    # Litestar appends the charset to a text/ media type itself.
    media_type = CONTENT_TYPE_LATEST.removesuffix("; charset=utf-8")
    text: MetricsText = state.metrics_text
    return Response(text.latest(), media_type=media_type)
