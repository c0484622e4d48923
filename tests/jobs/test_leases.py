"""A window renews its claim before it sends when renders held the event loop past it
(jobs/resources.py `Leases.renew_if_lapsing`): a starved CPU would else find the claim
lapsed at every send, window after window. Neither that nor the heartbeat renews a claim
that lapsed and that another window took. Against the real claims in PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from db.deliveries import DeliveryRepository
from db.pool import close_pool, create_pool
from jobs.resources import Lease, Leases
from tests.helpers import create_campaign, publish, recipients

SECONDS = 30.0


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    yield pool
    await close_pool(pool)


async def claim(db: asyncpg.Connection, run_id: uuid.UUID, lease_seconds: float) -> uuid.UUID:
    token = uuid.uuid4()
    claimed = await DeliveryRepository(db).claim(
        run_id, 0, 2, limit=3, exclude=[], token=token, lease_seconds=lease_seconds,
        provider="webhook", max_attempts=5,
    )  # fmt: skip
    assert len(claimed.rows) == 3
    return token


async def claimed_for(db: asyncpg.Connection, token: uuid.UUID) -> list[float]:
    """Seconds left of each delivery's claim by `token`."""
    rows = await db.fetch(
        "SELECT extract(epoch FROM claimed_until - now())::float8 AS left FROM deliveries"
        " WHERE claim = $1 ORDER BY position",
        token,
    )
    return [row["left"] for row in rows]


async def a_run(client) -> uuid.UUID:
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(3)})).json()
    return uuid.UUID(run["id"])


@pytest.fixture
async def run_id(client) -> uuid.UUID:
    return await a_run(client)


def lapsed_lease(leases: Leases, run_id: uuid.UUID, token: uuid.UUID) -> Lease:
    """Taken a whole lease ago: the renders held the loop past every heartbeat."""
    return leases.take(run_id, token, [0, 1, 2], since=time.monotonic() - SECONDS - 1)


async def test_a_lapsed_lease_whose_deliveries_are_still_its_own_is_renewed(db, pool, run_id):
    token = await claim(db, run_id, lease_seconds=0.1)
    await asyncio.sleep(0.2)  # lapsed in the database too, and nobody took them
    leases = Leases(SECONDS)
    lease = lapsed_lease(leases, run_id, token)

    await leases.renew_if_lapsing(pool, lease)

    assert lease.expires > time.monotonic() + SECONDS / 2
    assert all(left > SECONDS / 2 for left in await claimed_for(db, token))


async def test_a_lapsed_lease_whose_deliveries_another_window_took_stays_lapsed(db, pool, run_id):
    token = await claim(db, run_id, lease_seconds=0.1)
    await asyncio.sleep(0.2)
    other = await claim(db, run_id, lease_seconds=SECONDS)  # another window takes them
    leases = Leases(SECONDS)
    lease = lapsed_lease(leases, run_id, token)

    await leases.renew_if_lapsing(pool, lease)

    assert lease.expires < time.monotonic()  # its sends will not go out
    assert await claimed_for(db, token) == []
    assert len(await claimed_for(db, other)) == 3


async def test_a_lease_the_heartbeat_keeps_is_left_alone(db, pool, run_id):
    token = await claim(db, run_id, lease_seconds=SECONDS)
    before = await claimed_for(db, token)
    leases = Leases(SECONDS)
    lease = leases.take(run_id, token, [0, 1, 2], since=time.monotonic())

    await leases.renew_if_lapsing(pool, lease)

    assert all(
        left <= first for left, first in zip(await claimed_for(db, token), before, strict=True)
    )


async def test_a_late_heartbeat_renews_only_the_leases_whose_deliveries_are_still_their_own(
    db, pool, client, run_id
):
    """A heartbeat that comes after a claim lapsed (a starved loop) and another window
    took its deliveries leaves that lease lapsed, so its window sends no more: renewing
    it there would let both windows send the same messages."""
    lost = await claim(db, run_id, lease_seconds=0.1)
    await asyncio.sleep(0.2)
    other = await claim(db, run_id, lease_seconds=SECONDS)  # another window takes them
    kept_run = await a_run(client)
    kept = await claim(db, kept_run, lease_seconds=SECONDS)
    leases = Leases(SECONDS)
    lapsed = lapsed_lease(leases, run_id, lost)
    half_left = leases.take(kept_run, kept, [0, 1, 2], since=time.monotonic() - SECONDS / 2)

    await leases.renew(pool)

    # The kept lease renewed has 30 s left, less what a loaded machine's stalls took since;
    # not renewed, the 15 s it had: 3/4 of 30 s sits 7.5 s from each.
    assert lapsed.expires < time.monotonic()  # its sends will not go out
    assert half_left.expires > time.monotonic() + SECONDS * 0.75
    assert await claimed_for(db, lost) == []
    assert len(await claimed_for(db, other)) == 3
    assert all(left > SECONDS * 0.75 for left in await claimed_for(db, kept))
