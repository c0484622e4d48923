"""Delivery that no provider, timeout or clock can turn into endless sends (issue 21): real
worker processes (two, windows of the default WORKER_CONCURRENCY), several runs, the real
PostgreSQL and a real local HTTP receiver.

1. A 429 is bounded: DELIVERY_MAX_THROTTLES sends at most, at least a second apart, and a
   429 for one address pauses no one else.
2. No transaction is open across a send: PostgreSQL set up as a careful production one
   (idle_in_transaction_session_timeout and statement_timeout of 5 s) with a receiver
   taking 2 s per answer delivers every run, each message once.
3. A due delivery that another transaction holds locked during a job's last claim gets a
   follow-up job.
4. Workers whose clocks are 60 s behind or 120 s ahead send the same and churn no jobs.
(5, run events, is in test_run_events.py.)
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from db.pool import connect
from tests.fakes.webhook import HttpSink, Reply
from tests.helpers import create_campaign, publish, recipients
from tests.jobs.delivery_helpers import assert_counters_equal_rows, deliveries, ended
from tests.jobs.processes import Workers, delivery_ids

WORKERS = 2


@pytest.fixture
def workers(database_url, sink, tmp_path) -> Iterator[Workers]:
    """Workers with the settings' defaults but what a test sets: WORKER_CONCURRENCY 32,
    jobs of 500, DELIVERY_MAX_THROTTLES 10."""
    workers = Workers(
        database_url,
        sink,
        tmp_path,
        WORKER_CONCURRENCY=None,
        DELIVERY_RETRY_BASE_SECONDS=None,
        STALLED_JOB_SECONDS="3",
    )
    yield workers
    workers.stop_all()


async def until_db(check, seconds: float = 30) -> None:
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110 - other processes change the database
            await asyncio.sleep(0.05)


async def start(workers: Workers, db, *args: str, n: int = WORKERS) -> None:
    """Start `n` workers and wait until every one is ready (registered with procrastinate)."""
    for _ in range(n):
        workers.start(*args)

    async def ready() -> bool:
        count = await db.fetchval("SELECT count(*) FROM procrastinate_workers")
        return bool(count >= n)

    await until_db(ready)


async def publish_runs(
    client, sizes: list[int], brand: str = "brand-a", domain: str = "example.com"
) -> list[str]:
    campaign = await create_campaign(client, brand=brand)
    runs = []
    for size in sizes:
        body = {"recipients": recipients(size, domain=domain)}
        response = await publish(client, campaign["id"], body, brand=brand)
        assert response.status_code == 202, response.text
        runs.append(response.json()["id"])
    return runs


async def delivery_jobs(db) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'deliver_batch'"
    )
    return count


def accepted(sink: HttpSink) -> Counter[str]:
    """How often each delivery was answered 2xx."""
    return Counter(r.json()["delivery_id"] for r in list(sink.requests) if r.status == 200)


# --- 1. Throttling is bounded --------------------------------------------------------------

THROTTLING = {
    "user3@example.com": "0",
    "user4@example.com": "Wed, 21 Oct 2015 07:28:00 GMT",  # a date already past
    "user5@example.com": "-5",
    "user6@example.com": "soon",
}


async def test_a_receiver_that_only_ever_throttles_gets_ten_sends_a_second_apart_then_failed(
    client, db, sink, workers
):
    for address, retry_after in THROTTLING.items():
        sink.replies[address] = Reply(
            status=429, body=b"slow", headers={"Retry-After": retry_after}
        )
    # Without a readable Retry-After ("-5", "soon") the wait is the delivery's backoff, of
    # 2 s doubling by default; this one asks 0.4 s at most (0.001 s x 2^8, +50%) and gets
    # the minimum, 1 s, every time (a base of 0.05 s made the last waits up to 19 s).
    workers.env["DELIVERY_RETRY_BASE_SECONDS"] = "0.001"
    await start(workers, db)
    runs = await publish_runs(client, [200, 200, 200])

    for run_id in runs:
        assert await ended(db, run_id, seconds=90) == "completed"

    sends: dict[str, list[float]] = {}
    for request in sink.requests:
        sends.setdefault(request.json()["delivery_id"], []).append(request.received_at)
    for run_id in runs:
        rows = await deliveries(db, run_id)
        throttled = [r for r in rows if r["recipient"] in THROTTLING]
        assert {(r["status"], r["reason"], r["attempts"], r["throttles"]) for r in throttled} == {
            ("failed", "throttled", 0, 10)
        }
        for row in throttled:
            times = sends[f"{run_id}:{row['position']}"]
            assert len(times) == 10  # DELIVERY_MAX_THROTTLES, then no more
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert min(gaps) >= 0.99, gaps  # at least a second, whatever Retry-After said
        assert throttled[0]["last_error"].startswith("throttled 10 times; last: HTTP 429")
        counts = await assert_counters_equal_rows(db, run_id)
        assert counts == {"sent": 196, "failed": 4}
    assert set(accepted(sink).values()) == {1}
    # About a job per throttle and run: before, 370 jobs in 3 s for one 429.
    assert await delivery_jobs(db) <= 3 * 20


async def test_a_429_for_one_address_pauses_no_other_recipient(client, db, sink, workers):
    sink.replies["user0@example.com"] = Reply(status=429, headers={"Retry-After": "3"})
    workers.env["DELIVERY_MAX_THROTTLES"] = "3"
    await start(workers, db)
    (throttled_run,) = await publish_runs(client, [20])
    async with asyncio.timeout(30):
        while not any(r.status == 429 for r in list(sink.requests)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    other_runs = await publish_runs(client, [400, 400], brand="brand-b", domain="example.org")

    for run_id in other_runs:
        assert await ended(db, run_id) == "completed"
        assert await assert_counters_equal_rows(db, run_id) == {"sent": 400}
    assert await ended(db, throttled_run) == "completed"
    throttled = (await deliveries(db, throttled_run))[0]
    assert (throttled["status"], throttled["reason"], throttled["throttles"]) == (
        "failed",
        "throttled",
        3,
    )
    # Only that delivery waited: the provider was never paused for every worker.
    assert await db.fetchval("SELECT count(*) FROM provider_pauses") == 0
    assert set(accepted(sink).values()) == {1}
    assert len(accepted(sink)) == 19 + 800


# --- 2. No transaction open across a send --------------------------------------------------


async def test_with_idle_and_statement_timeouts_of_5_s_and_2_s_answers_each_message_goes_once(
    client, db, database_url, sink, workers
):
    await db.execute(
        """
        DO $$ BEGIN
            EXECUTE format('ALTER DATABASE %I SET idle_in_transaction_session_timeout = ''5s''',
                           current_database());
            EXECUTE format('ALTER DATABASE %I SET statement_timeout = ''5s''',
                           current_database());
        END $$
        """
    )
    careful = await connect(database_url)
    try:
        assert await careful.fetchval("SHOW idle_in_transaction_session_timeout") == "5s"
        assert await careful.fetchval("SHOW statement_timeout") == "5s"
    finally:
        await careful.close()
    sink.default = Reply(delay=2.0)
    # A window of 32 sends over 16 connections takes 4 s and more: before, it held its
    # transaction open all that time.
    workers.env["WEBHOOK_MAX_CONNECTIONS"] = "16"
    await start(workers, db)
    runs = await publish_runs(client, [100, 100, 100])

    for run_id in runs:
        assert await ended(db, run_id, seconds=120) == "completed"
        assert await assert_counters_equal_rows(db, run_id) == {"sent": 100}
    assert set(delivery_ids(sink).values()) == {1}
    assert len(delivery_ids(sink)) == 300
    assert "idle-in-transaction" not in workers.logs()


# --- 3. Nothing pending is left without a job ----------------------------------------------


async def test_a_due_delivery_locked_during_the_jobs_last_claim_gets_a_follow_up(
    client, db, database_url, sink, workers
):
    runs = await publish_runs(client, [600, 600, 600])  # two jobs each: 0-499, 500-599
    holder = await connect(database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        # As the provider-feedback statement does (FOR UPDATE OF d): the last row of each
        # job's range, due, locked while the jobs make their last claims.
        locked = [(uuid.UUID(run_id), position) for run_id in runs for position in (499, 599)]
        for run_id, position in locked:
            await holder.execute(
                "SELECT 1 FROM deliveries WHERE run_id = $1 AND position = $2 FOR UPDATE",
                run_id,
                position,
            )
        await start(workers, db)

        async def all_but_locked_sent() -> bool:
            sent: int = await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'sent'")
            return sent == 1800 - len(locked)

        await until_db(all_but_locked_sent)

        async def first_jobs_ended() -> bool:
            ended_jobs: int = await db.fetchval(
                "SELECT count(DISTINCT (args->>'run_id', args->>'first')) FROM procrastinate_jobs"
                " WHERE task_name = 'deliver_batch' AND status IN ('succeeded', 'failed')"
            )
            return ended_jobs == len(locked)  # every range's first job made its last claim

        await until_db(first_jobs_ended)
        for run_id, position in locked:
            first = 0 if position < 500 else 500
            waiting = await db.fetchval(
                """
                SELECT count(*) FROM procrastinate_jobs
                WHERE task_name = 'deliver_batch' AND status IN ('todo', 'doing')
                  AND args->>'run_id' = $1 AND (args->>'first')::int = $2
                """,
                str(run_id),
                first,
            )
            assert waiting >= 1, (run_id, position)
        await transaction.commit()
    finally:
        await holder.close()

    for run_id in runs:
        assert await ended(db, run_id) == "completed"
        assert await assert_counters_equal_rows(db, run_id) == {"sent": 600}
    assert set(delivery_ids(sink).values()) == {1}


# --- 4. Due times from the database's clock ------------------------------------------------


@pytest.mark.parametrize("skew", [-60, 120], ids=["60-s-behind", "120-s-ahead"])
async def test_workers_with_a_wrong_clock_send_the_same_and_churn_no_jobs(
    client, db, sink, workers, skew
):
    # The first 64 answers (two windows of each worker) are 429 Retry-After 3: throttling
    # as a whole, so the provider is paused 3 s for every worker, and each job comes back
    # after the pause. Then a newcomer run every 0.3 s makes the jobs yield their slots.
    sink.script.extend([Reply(status=429, headers={"Retry-After": "3"})] * 64)
    await start(workers, db, "tests.jobs.skewed_worker", str(skew))
    runs = await publish_runs(client, [300, 300, 300])
    for _ in range(5):
        runs += await publish_runs(client, [1], brand="brand-b")
        await asyncio.sleep(0.3)

    for run_id in runs:
        assert await ended(db, run_id, seconds=60) == "completed"
    assert await db.fetchval("SELECT count(*) FROM provider_pauses") == 1
    assert set(accepted(sink).values()) == {1}
    assert len(accepted(sink)) == 905
    assert len(sink.requests) == 905 + 64
    # Before, a worker 60 s behind made 565 jobs in 3 s while the pause lasted; one 120 s
    # ahead left its follow-ups due two minutes late.
    assert await delivery_jobs(db) <= 60
