"""Readiness follows the database, without a restart, even when it is away at start."""

from __future__ import annotations

import asyncio
import time

from litestar.testing import AsyncTestClient

from app.http.asgi import create_app
from tests.helpers import database_unreachable


async def ready_within(client, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while (response := await client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.1)
    assert response.json() == {"status": "ready"}


async def test_readiness_goes_false_and_true_again_with_the_database(client, db):
    await ready_within(client, 0)

    async with database_unreachable(db):
        down = await client.get("/readyz")
        again = await client.get("/readyz")

    assert (down.status_code, again.status_code) == (503, 503)
    assert down.json()["error"] == "unavailable"
    await ready_within(client)
    assert (await client.get("/healthz")).status_code == 200


async def test_web_starts_while_the_database_is_away_and_becomes_ready(settings, db):
    client = AsyncTestClient(app=create_app(settings))
    async with database_unreachable(db):
        await client.__aenter__()  # the lifespan opens the pool now
        try:
            assert (await client.get("/readyz")).status_code == 503
            assert (await client.get("/healthz")).status_code == 200
        except BaseException:
            await client.__aexit__(None, None, None)
            raise
    try:
        await ready_within(client)
    finally:
        await client.__aexit__(None, None, None)
