"""Idempotency-Key on publish: replays, reuse with another body, requests in flight,
races of many identical requests, expiry and the purge of expired keys."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import Counter

import httpx
import pytest

from app.services.idempotency import parse_key
from db.idempotency import IdempotencyKeyRepository
from db.pool import create_pool
from db.queue import MAINTENANCE_QUEUE
from jobs.app import app as procrastinate_app
from jobs.tasks import purge_finished_jobs, purge_idempotency_keys
from tests.helpers import CAMPAIGNS, create_campaign, recipients
from tests.tokens import bearer
from tests.waiting import PATIENCE

SLOW_RUN_INSERT = """
CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$;
CREATE TRIGGER slow_down BEFORE INSERT ON runs FOR EACH ROW EXECUTE FUNCTION slow_down();
"""


async def publish_with_key(client, campaign, body, key, *, brand="brand-a"):
    return await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/publish",
        json=body,
        headers={**bearer(brands=[brand]), "Idempotency-Key": key},
    )


async def counts(db) -> tuple[int, int, int, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM deliveries) AS d,"
        " (SELECT count(*) FROM procrastinate_jobs) AS jobs,"
        " (SELECT count(*) FROM idempotency_keys) AS keys"
    )
    return row["runs"], row["d"], row["jobs"], row["keys"]


async def test_a_repeat_with_the_same_body_returns_the_original_run_and_creates_nothing(client, db):
    campaign = await create_campaign(client)
    body = {"recipients": recipients(3)}

    first = await publish_with_key(client, campaign, body, "order-42")
    again = await publish_with_key(client, campaign, body, "order-42")

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert await counts(db) == (1, 3, 1, 1)


async def test_the_body_is_compared_as_json_not_as_bytes(client, db):
    campaign = await create_campaign(client)
    headers = {**bearer(), "Idempotency-Key": "k", "Content-Type": "application/json"}
    url = f"{CAMPAIGNS}/{campaign['id']}/publish"

    first = await client.post(
        url,
        content=b'{"recipients":[{"person_id":"1","recipient":"a@example.com"}]}',
        headers=headers,
    )
    reformatted = await client.post(
        url,
        content=b'{ "recipients": [ {"recipient": "a@example.com", "person_id": "1"} ] }\n',
        headers=headers,
    )

    assert reformatted.status_code == 202
    assert reformatted.json()["id"] == first.json()["id"]
    assert (await counts(db))[0] == 1


async def test_a_structured_field_key_is_the_same_key_as_the_bare_one(client, db):
    campaign = await create_campaign(client)
    body = {"recipients": recipients(1)}

    bare = await publish_with_key(client, campaign, body, "abc-123")
    quoted = await publish_with_key(client, campaign, body, '"abc-123"')

    assert quoted.json()["id"] == bare.json()["id"]
    assert (await counts(db))[0] == 1


async def test_the_same_key_with_another_body_is_422(client, db):
    campaign = await create_campaign(client)
    await publish_with_key(client, campaign, {"recipients": recipients(2)}, "k")

    response = await publish_with_key(client, campaign, {"recipients": recipients(3)}, "k")

    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_key_reused"
    assert await counts(db) == (1, 2, 1, 1)


async def test_keys_are_scoped_to_their_campaign_and_brand(client, db):
    first = await create_campaign(client, brand="brand-a")
    second = await create_campaign(client, brand="brand-a")
    other_brand = await create_campaign(client, brand="brand-b")
    body = {"recipients": recipients(1)}

    runs = [
        await publish_with_key(client, first, body, "k"),
        await publish_with_key(client, second, body, "k"),
        await publish_with_key(client, other_brand, body, "k", brand="brand-b"),
    ]

    assert [r.status_code for r in runs] == [202, 202, 202]
    assert len({r.json()["id"] for r in runs}) == 3
    assert await counts(db) == (3, 3, 3, 3)


async def test_another_brand_cannot_replay_a_key_it_does_not_own(client, db):
    campaign = await create_campaign(client, brand="brand-a")
    body = {"recipients": recipients(1)}
    await publish_with_key(client, campaign, body, "k")

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/publish",
        json=body,
        headers={**bearer(brands=["brand-b"]), "Idempotency-Key": "k"},
    )

    assert response.status_code == 404
    assert "runs" not in response.text


async def test_a_repeat_after_the_campaign_was_archived_still_returns_the_run(client):
    campaign = await create_campaign(client)
    body = {"recipients": recipients(1)}
    first = await publish_with_key(client, campaign, body, "k")
    await client.post(f"{CAMPAIGNS}/{campaign['id']}/archive", headers=bearer())

    again = await publish_with_key(client, campaign, body, "k")
    fresh = await publish_with_key(client, campaign, body, "new-key")

    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert fresh.status_code == 412


async def test_a_failed_publish_leaves_no_key_and_its_retry_publishes(client, db):
    campaign = await create_campaign(client, activate=False)
    body = {"recipients": recipients(1)}

    refused = await publish_with_key(client, campaign, body, "k")
    await client.post(f"{CAMPAIGNS}/{campaign['id']}/activate", headers=bearer())
    retried = await publish_with_key(client, campaign, body, "k")

    assert refused.status_code == 412
    assert retried.status_code == 202
    assert await counts(db) == (1, 1, 1, 1)


async def test_an_expired_key_publishes_anew(client, db):
    campaign = await create_campaign(client)
    body = {"recipients": recipients(1)}
    first = await publish_with_key(client, campaign, body, "k")
    await db.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")

    again = await publish_with_key(client, campaign, body, "k")
    third = await publish_with_key(client, campaign, body, "k")

    assert again.status_code == 202 and again.json()["id"] != first.json()["id"]
    assert third.json()["id"] == again.json()["id"]
    assert await counts(db) == (2, 2, 2, 1)
    key = await db.fetchrow("SELECT run_id, expires_at - created_at AS ttl FROM idempotency_keys")
    assert str(key["run_id"]) == again.json()["id"]
    assert key["ttl"].total_seconds() == 24 * 3600


async def test_keys_hold_for_24_hours(client, db):
    campaign = await create_campaign(client)
    await publish_with_key(client, campaign, {"recipients": recipients(1)}, "k")

    ttl = await db.fetchval("SELECT expires_at - created_at FROM idempotency_keys")

    assert ttl.total_seconds() == 24 * 3600


@pytest.mark.parametrize("key", ["", '"unterminated', "tab\there", "é", "x" * 256])
async def test_a_malformed_key_is_400(client, db, key):
    campaign = await create_campaign(client)

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/publish",
        json={"recipients": recipients(1)},
        headers=[*bearer().items(), ("Idempotency-Key", key.encode("utf-8"))],
    )

    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"
    assert (await counts(db))[0] == 0


async def test_publish_without_a_key_writes_no_key(client, db):
    campaign = await create_campaign(client)

    for _ in range(2):
        response = await client.post(
            f"{CAMPAIGNS}/{campaign['id']}/publish",
            json={"recipients": recipients(1)},
            headers=bearer(),
        )
        assert response.status_code == 202

    assert await counts(db) == (2, 2, 2, 0)


async def key_claimed(db) -> None:
    """Wait until a publish holds an Idempotency-Key (its advisory lock is granted)."""
    query = (
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()"
    )
    async with asyncio.timeout(PATIENCE):
        while True:  # polling the database: there is no event to wait for
            if await db.fetchval(query):
                return
            await asyncio.sleep(0.01)


async def test_a_repeat_while_the_first_is_in_flight_is_409_with_retry_after(live_server, db):
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        campaign = await create_campaign(http)
        await db.execute(SLOW_RUN_INSERT.format(seconds=2))
        body = {"recipients": recipients(5)}

        first = asyncio.create_task(publish_with_key(http, campaign, body, "k"))
        await key_claimed(db)  # the first request now holds the key, inside pg_sleep
        in_flight = await publish_with_key(http, campaign, body, "k")
        other_body = await publish_with_key(http, campaign, {"recipients": recipients(6)}, "k")
        original = await first
        done = await publish_with_key(http, campaign, body, "k")

    assert in_flight.status_code == 409
    assert in_flight.json()["error"] == "idempotency_request_in_progress"
    assert in_flight.headers["retry-after"] == "1"
    assert other_body.status_code == 409  # its body cannot be compared before the commit
    assert original.status_code == 202
    assert done.status_code == 202 and done.json() == original.json()
    assert await counts(db) == (1, 5, 1, 1)


async def race(live_server: str, campaign: dict, body: dict, n: int) -> list[httpx.Response]:
    """`n` identical publishes with one key, each on its own connection, all at once."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=live_server, timeout=60, limits=limits) as http:
        start = asyncio.Event()

        async def one() -> httpx.Response:
            await start.wait()
            return await publish_with_key(http, campaign, body, "race")

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0.05)
        start.set()
        return list(await asyncio.gather(*tasks))


async def assert_one_run_and_one_set_of_jobs(db, responses, n_recipients: int) -> str:
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {202, 409}, statuses
    run_ids = {r.json()["id"] for r in responses if r.status_code == 202}
    assert len(run_ids) == 1, run_ids
    assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 409)
    (run_id,) = run_ids
    assert await db.fetchval("SELECT count(*) FROM runs") == 1
    assert await db.fetchval("SELECT count(*) FROM deliveries") == n_recipients
    jobs = await db.fetch("SELECT args FROM procrastinate_jobs")
    assert len(jobs) == math.ceil(n_recipients / 500)
    assert {j["args"]["run_id"] for j in jobs} == {run_id}
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 1
    return run_id


async def test_25_identical_requests_racing_make_exactly_one_run(live_server, db):
    async with httpx.AsyncClient(base_url=live_server) as http:
        campaign = await create_campaign(http)
    body = {"recipients": recipients(1200)}

    responses = await race(live_server, campaign, body, 25)

    run_id = await assert_one_run_and_one_set_of_jobs(db, responses, 1200)
    async with httpx.AsyncClient(base_url=live_server) as http:
        after = await publish_with_key(http, campaign, body, "race")
    assert after.status_code == 202 and after.json()["id"] == run_id


async def test_a_race_against_a_slow_first_request_answers_409_until_it_commits(live_server, db):
    async with httpx.AsyncClient(base_url=live_server) as http:
        campaign = await create_campaign(http)
    await db.execute(SLOW_RUN_INSERT.format(seconds=0.5))
    body = {"recipients": recipients(10)}

    responses = await race(live_server, campaign, body, 30)

    await assert_one_run_and_one_set_of_jobs(db, responses, 10)
    statuses = Counter(r.status_code for r in responses)
    assert statuses[409] >= 1 and statuses[202] >= 1, statuses


# purge


async def insert_keys(db, campaign_id: str, expired: int, live: int) -> None:
    run_id = await db.fetchval(
        "INSERT INTO runs (campaign_id, brand_id, total_recipients, created_by)"
        " VALUES ($1, 'brand-a', 1, 't') RETURNING id",
        uuid.UUID(campaign_id),
    )
    await db.execute(
        "INSERT INTO idempotency_keys (brand_id, campaign_id, key, fingerprint, run_id, expires_at)"
        " SELECT 'brand-a', $1, 'k' || i, '\\x00', $2,"
        "  now() + CASE WHEN i <= $3::int THEN interval '-1 minute' ELSE interval '1 hour' END"
        " FROM generate_series(1, $3::int + $4::int) i",
        uuid.UUID(campaign_id),
        run_id,
        expired,
        live,
    )


async def test_purge_deletes_expired_keys_only_in_batches(client, db):
    campaign = await create_campaign(client)
    await insert_keys(db, campaign["id"], expired=7, live=3)

    deleted = await IdempotencyKeyRepository(db).purge_expired(batch_size=3)

    assert deleted == 7
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 3
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE expires_at < now()") == 0


async def test_the_periodic_purge_task_runs_in_a_worker(client, db, database_url):
    campaign = await create_campaign(client)
    await insert_keys(db, campaign["id"], expired=4, live=2)
    assert {
        t.task.name: t.cron for t in procrastinate_app.periodic_registry.periodic_tasks.values()
    }["purge_idempotency_keys"] == "*/10 * * * *"
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        async with procrastinate_app.open_async(pool):
            await purge_idempotency_keys.defer_async(timestamp=0)
            await procrastinate_app.run_worker_async(
                queues=[MAINTENANCE_QUEUE], wait=False, install_signal_handlers=False
            )
    finally:
        await pool.close()

    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 2
    job = await db.fetchrow(
        "SELECT status FROM procrastinate_jobs WHERE task_name = 'purge_idempotency_keys'"
    )
    assert job["status"] == "succeeded"


@pytest.mark.parametrize(
    ("header", "key"),
    [("abc", "abc"), ('"abc"', "abc"), ('"a b\\"c\\\\"', 'a b"c\\'), ("a:b/c=", "a:b/c=")],
)
def test_keys_are_read_bare_or_as_structured_field_strings(header, key):
    assert parse_key(header) == key


async def test_the_hourly_purge_deletes_only_old_succeeded_jobs(db, database_url):
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        async with procrastinate_app.open_async(pool):
            for _ in range(3):
                await purge_idempotency_keys.defer_async(timestamp=0)
            await procrastinate_app.run_worker_async(
                queues=[MAINTENANCE_QUEUE], wait=False, install_signal_handlers=False
            )
            old = await db.fetchval("SELECT min(id) FROM procrastinate_jobs")
            await db.execute(
                "UPDATE procrastinate_events SET at = at - interval '200 hours' WHERE job_id = $1",
                old,
            )
            before = await db.fetch("SELECT id, status FROM procrastinate_jobs")
            await purge_finished_jobs(timestamp=0)
    finally:
        await pool.close()

    assert {job["status"] for job in before} == {"succeeded"}
    after = {job["id"] for job in await db.fetch("SELECT id FROM procrastinate_jobs")}
    assert after == {job["id"] for job in before} - {old}
    assert {
        t.task.name: t.cron for t in procrastinate_app.periodic_registry.periodic_tasks.values()
    }["purge_finished_jobs"] == "17 * * * *"
