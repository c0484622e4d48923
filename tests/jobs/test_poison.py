"""Answers we cannot store, and windows that cannot commit, never make a send repeat
without bound: against a real local receiver and real in-process workers, every delivery
reaches the receiver at most DELIVERY_MAX_ATTEMPTS times (once for a 2xx), the run
completes, and its counters equal its rows."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import replace

import pytest

from jobs.providers import OutgoingMessage, SendResult
from tests.fakes.webhook import HttpSink, Reply
from tests.helpers import create_campaign, publish, recipients
from tests.jobs.delivery_helpers import (
    assert_counters_equal_rows,
    deliveries,
    ended,
    running_worker,
)

MAX_ATTEMPTS = 3


@pytest.fixture
def webhook_settings(webhook_settings):
    return replace(
        webhook_settings,
        delivery_retry_base_seconds=0.01,
        delivery_max_attempts=MAX_ATTEMPTS,
        worker_concurrency=4,
        stalled_job_seconds=3,
    )


def reached(sink: HttpSink) -> Counter[str]:
    """How often each recipient reached the receiver."""
    return Counter(request.json()["recipient"] for request in list(sink.requests))


async def deliver(client, db, settings, n: int = 6, **worker: object) -> tuple[str, list]:
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(n)})).json()
    async with running_worker(settings, **worker):
        assert await ended(db, run["id"]) == "completed"
    await assert_counters_equal_rows(db, run["id"])
    return run["id"], await deliveries(db, run["id"])


async def test_a_nul_in_the_message_id_is_stored_replaced_and_sent_once(
    client, db, webhook_settings, sink
):
    sink.replies["user1@example.com"] = Reply(body=b'{"id": "x\\u0000y"}')

    _, rows = await deliver(client, db, webhook_settings)

    assert set(reached(sink).values()) == {1}
    assert rows[1]["status"] == "sent" and rows[1]["provider_message_id"] == "x\ufffdy"


async def test_a_message_id_of_100000_characters_is_stored_cut_and_sent_once(
    client, db, webhook_settings, sink
):
    sink.replies["user1@example.com"] = Reply(body=json.dumps({"id": "i" * 100_000}).encode())

    _, rows = await deliver(client, db, webhook_settings)

    assert set(reached(sink).values()) == {1}
    assert rows[1]["status"] == "sent" and rows[1]["provider_message_id"] == "i" * 256


@pytest.mark.parametrize(
    "status, body",
    [
        (503, b"busy \x00 and \xff\xfe not UTF-8"),
        (500, b"E" * 10_000_000),
    ],
    ids=["nul-and-invalid-utf8", "10-MB-body"],
)
async def test_a_transient_answer_we_cannot_store_as_is_is_tried_max_attempts_times(
    client, db, webhook_settings, sink, status, body
):
    sink.replies["user1@example.com"] = Reply(status=status, body=body)

    _, rows = await deliver(client, db, webhook_settings)

    times = reached(sink)
    assert times.pop("user1@example.com") == MAX_ATTEMPTS
    assert set(times.values()) == {1}
    failed = rows[1]
    assert (failed["status"], failed["attempts"]) == ("failed", MAX_ATTEMPTS)
    assert failed["last_error"].startswith(f"gave up after 3 attempts; last: HTTP {status}: ")
    assert "\x00" not in failed["last_error"] and len(failed["last_error"]) <= 1000


async def test_a_permanent_answer_with_a_nul_fails_once_with_the_answer(
    client, db, webhook_settings, sink
):
    sink.replies["user1@example.com"] = Reply(status=400, body=b"no such\x00 user")

    _, rows = await deliver(client, db, webhook_settings)

    assert set(reached(sink).values()) == {1}
    assert rows[1]["status"] == "failed"
    assert rows[1]["last_error"] == "HTTP 400: no such\ufffd user"


class RaisingProvider:
    """A provider with a bug: it raises something unexpected on every call."""

    name = "broken"

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.calls[message.recipient] += 1
        raise RuntimeError("bug \x00 in the provider")

    async def aclose(self) -> None:
        pass


async def test_a_provider_that_raises_on_every_call_gives_up_after_max_attempts(
    client, db, webhook_settings
):
    provider = RaisingProvider()

    _, rows = await deliver(
        client, db, webhook_settings, providers={"email": provider, "sms": provider}
    )

    assert set(provider.calls.values()) == {MAX_ATTEMPTS}
    assert {r["status"] for r in rows} == {"failed"}
    assert rows[0]["last_error"].startswith("gave up after 3 attempts; last: unexpected: Runtime")


async def test_a_delivery_whose_outcome_cannot_be_recorded_fails_alone_after_one_send(
    client, db, webhook_settings, sink
):
    # A deterministic refusal of the database, as a bug or a constraint of ours would be:
    # recording user1 as sent fails every time.
    await db.execute(
        """
        CREATE FUNCTION refuse_sent() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused: %', NEW.recipient; END $$;
        CREATE TRIGGER refuse_sent BEFORE UPDATE ON deliveries FOR EACH ROW
            WHEN (NEW.recipient = 'user1@example.com' AND NEW.status = 'sent')
            EXECUTE FUNCTION refuse_sent();
        """
    )

    _, rows = await deliver(client, db, webhook_settings)

    assert set(reached(sink).values()) == {1}
    assert [r["status"] for r in rows] == ["sent", "failed", "sent", "sent", "sent", "sent"]
    assert rows[1]["last_error"].startswith("its outcome could not be stored (RaiseError)")
    assert rows[1]["attempts"] == 1


async def test_sends_that_can_never_be_counted_as_sent_go_once_and_fail(
    client, db, webhook_settings, sink
):
    # Nothing can be counted as sent for this run: every record of a send fails.
    await db.execute(
        """
        CREATE FUNCTION refuse_counting() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused'; END $$;
        CREATE TRIGGER refuse_counting BEFORE UPDATE ON runs FOR EACH ROW
            WHEN (NEW.sent_count > OLD.sent_count) EXECUTE FUNCTION refuse_counting();
        """
    )

    _, rows = await deliver(client, db, webhook_settings, n=3)

    # Each send was counted when its window claimed it; the record failed, and each
    # delivery was then stored on its own as the one outcome the database takes.
    assert reached(sink) == {f"user{i}@example.com": 1 for i in range(3)}
    assert {(r["status"], r["attempts"]) for r in rows} == {("failed", 1)}
    assert rows[0]["last_error"] == (
        "its outcome could not be stored (RaiseError); the answer is lost"
    )


async def test_a_committed_attempt_and_an_unrecorded_one_share_one_limit(
    client, db, webhook_settings, sink
):
    # The first send is a 503, recorded (attempt 1, a follow-up job); from then on no send
    # can be recorded as sent. The second attempt was counted at its claim all the same.
    sink.script.append(Reply(status=503, body=b"busy"))
    await db.execute(
        """
        CREATE FUNCTION refuse_counting() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused'; END $$;
        CREATE TRIGGER refuse_counting BEFORE UPDATE ON runs FOR EACH ROW
            WHEN (NEW.sent_count > OLD.sent_count) EXECUTE FUNCTION refuse_counting();
        """
    )

    _, rows = await deliver(client, db, webhook_settings, n=1)

    assert reached(sink) == {"user0@example.com": 2}
    assert (rows[0]["status"], rows[0]["attempts"]) == ("failed", 2)
    assert rows[0]["last_error"].startswith("its outcome could not be stored")


async def test_a_row_that_refuses_every_outcome_is_sent_at_most_max_attempts_times(
    client, db, webhook_settings, sink
):
    # user1's row can be neither sent nor failed: each send of it is counted at its
    # claim, and once they reach the limit it is sent no more. The others are delivered once, and
    # the job ends rather than trying for ever.
    await db.execute(
        """
        CREATE FUNCTION refuse_outcomes() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused: %', NEW.recipient; END $$;
        CREATE TRIGGER refuse_outcomes BEFORE UPDATE ON deliveries FOR EACH ROW
            WHEN (NEW.recipient = 'user1@example.com' AND NEW.status IN ('sent', 'failed'))
            EXECUTE FUNCTION refuse_outcomes();
        """
    )
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(4)})).json()

    async with running_worker(webhook_settings), asyncio.timeout(60):
        while await db.fetchval(  # noqa: ASYNC110 - the worker's state is in the database
            "SELECT count(*) FROM procrastinate_jobs"
            " WHERE task_name = 'deliver_batch' AND status IN ('todo', 'doing')"
        ):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a send that would come after the job's end
        jobs = await db.fetch(
            "SELECT DISTINCT status FROM procrastinate_jobs WHERE task_name = 'deliver_batch'"
        )

    assert reached(sink) == {
        "user0@example.com": 1,
        "user1@example.com": MAX_ATTEMPTS,
        "user2@example.com": 1,
        "user3@example.com": 1,
    }
    assert [j["status"] for j in jobs] == ["succeeded"]
    rows = await deliveries(db, run["id"])
    assert [r["status"] for r in rows] == ["sent", "pending", "sent", "sent"]
    # Each send counted at its claim: the row that refuses every outcome shows them.
    assert (rows[1]["attempts"], rows[1]["claim"]) == (MAX_ATTEMPTS, None)


async def test_a_transient_failure_whose_follow_up_cannot_be_deferred_is_not_resent_early(
    client, db, webhook_settings, sink
):
    sink.replies["user1@example.com"] = Reply(status=503, body=b"busy")
    await db.execute(
        """
        CREATE FUNCTION refuse_follow_ups() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'no follow-up'; END $$;
        CREATE TRIGGER refuse_follow_ups BEFORE INSERT ON procrastinate_jobs FOR EACH ROW
            WHEN (NEW.task_name = 'deliver_batch' AND NEW.scheduled_at IS NOT NULL)
            EXECUTE FUNCTION refuse_follow_ups();
        """
    )

    _, rows = await deliver(client, db, webhook_settings)

    assert set(reached(sink).values()) == {1}
    assert (rows[1]["status"], rows[1]["attempts"]) == ("failed", 1)
    assert rows[1]["last_error"].startswith("its outcome could not be stored")
