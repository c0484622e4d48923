"""The pooled HTTP client of the providers that POST over HTTP (webhook, Twilio), and how
their answers are read: bounded, with Retry-After as seconds."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

import aiohttp
import certifi
from yarl import URL

from jobs.providers.base import TransientError

# What is read of an answer: enough for any JSON with an id, and for the start of an error
# page; a receiver answering megabytes costs no more memory than this per send.
MAX_ANSWER_BYTES = 1024 * 1024
# A Retry-After further away than this is taken as this: a typo or a hostile receiver must
# not stop deliveries for days.
MAX_RETRY_AFTER_SECONDS = 3600.0
# And one closer than this (0, a date already past) as this: a receiver answering
# `429, Retry-After: 0` must not get the same message again at once, for ever.
MIN_RETRY_AFTER_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None
    body: bytes
    """Its first MAX_ANSWER_BYTES."""


class PooledHttp:
    """At most `max_connections` POSTs in flight to one origin, on kept-alive connections.

    A send holds a slot from before it takes a connection until it gave it back, so that
    the pool never makes a send wait: the wait is here, outside the send's timeout, and a
    wait that never reached the receiver costs no attempt."""

    def __init__(self, name: str, url: URL, *, timeout: float, max_connections: int) -> None:
        self._name = name
        self._timeout = timeout
        # Mozilla's CAs (certifi), as httpx trusted before: not whatever the image ships.
        self._tls = (
            ssl.create_default_context(cafile=certifi.where()) if url.scheme == "https" else None
        )
        self._slots = asyncio.Semaphore(max_connections)
        # aiohttp binds a session to the running loop: it is made by the first send.
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def post(self, url: URL, body: bytes, headers: Mapping[str, str]) -> Answer:
        """The answer, whatever its status; TransientError when none came (a timeout, a
        refused, reset or lost connection)."""
        async with self._slots:
            session = self._open_session()
            try:
                async with session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    answer = await _read_at_most(response.content, MAX_ANSWER_BYTES)
            except TimeoutError as exc:  # aiohttp's own timeouts are TimeoutErrors too
                raise TransientError(
                    f"Timeout: no complete answer within {self._timeout:g} s"
                ) from exc
            except aiohttp.ClientError as exc:  # refused, reset or lost connections
                raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        return Answer(status, retry_after, answer)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._closed:
                raise RuntimeError(f"the {self._name} provider is closed")
            self._session = aiohttp.ClientSession(
                # No limit of its own: the slots above are the limit, and waiting in the
                # connector would run down the send's timeout.
                connector=aiohttp.TCPConnector(limit=0, ssl=self._tls or True),
                # The whole send on a connection (connect, request, answer): the longest a
                # slot is held.
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"User-Agent": f"messaging-{self._name}/1"},
                # Nothing a receiver sets is sent back with the next message.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The first `limit` bytes of the body; the rest is not read (aiohttp then closes the
    connection rather than reusing it)."""
    answer = bytearray()
    while len(answer) < limit:
        chunk = await content.read(limit - len(answer))
        if not chunk:
            break
        answer += chunk
    return bytes(answer)


def retry_after_seconds(value: str, now: float | None = None) -> float | None:
    """A Retry-After header as seconds from `now` (time.time() by default), from
    MIN_RETRY_AFTER_SECONDS to MAX_RETRY_AFTER_SECONDS; None when it is neither
    delay-seconds nor an HTTP-date (a negative number, a fraction, text)."""
    value = value.strip()
    if value.isdecimal():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" or asctime's format: HTTP-dates are in GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, MIN_RETRY_AFTER_SECONDS), MAX_RETRY_AFTER_SECONDS)
