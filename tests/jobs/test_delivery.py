"""Published runs delivered by real in-process workers through real providers."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.domain.schemas import Recipient
from app.http.auth import AccessToken
from app.services.publishing import publish_campaign
from jobs.worker import run_worker
from tests.fakes.smtp import SmtpSink
from tests.fakes.webhook import Reply
from tests.helpers import CAMPAIGNS, create_campaign, publish, recipients
from tests.jobs.delivery_helpers import (
    assert_counters_equal_rows,
    deliver_until_ended,
    deliveries,
    drain,
    run_row,
    run_status,
    until,
)
from tests.jobs.processes import delivery_ids
from tests.tokens import bearer
from tests.waiting import PATIENCE, within


@pytest.fixture
def webhook_settings(webhook_settings):
    return replace(
        webhook_settings,
        delivery_retry_base_seconds=0.01,
        delivery_max_attempts=3,
        worker_concurrency=8,
    )


async def test_published_run_completes_with_the_log_provider(client, db, settings, caplog):
    campaign = await create_campaign(client)
    body = {
        "recipients": [
            *recipients(1199),
            {"person_id": "x", "recipient": "nope"},
            {"person_id": "y", "recipient": "user3@example.com"},
        ]
    }
    run = (await publish(client, campaign["id"], body)).json()

    await deliver_until_ended(settings, db, run["id"])

    final = await run_row(db, run["id"])
    assert final["status"] == "completed"
    assert (final["sent_count"], final["failed_count"], final["skipped_count"]) == (1199, 0, 2)
    assert final["started_at"] is not None
    assert final["completed_at"] >= final["started_at"]
    rows = await deliveries(db, run["id"])
    sent = [r for r in rows if r["status"] == "sent"]
    assert all(r["sent_at"] and r["attempts"] == 1 for r in sent)
    assert sent[0]["provider_message_id"] == f"log-{run['id']}:0"
    await assert_counters_equal_rows(db, run["id"])
    api = await client.get(f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}", headers=bearer())
    assert api.json()["status"] == "completed" and api.json()["sent_count"] == 1199


async def test_webhook_receives_each_message_once_signed_with_its_idempotency_key(
    client, db, webhook_settings, sink
):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(40)})).json()

    await deliver_until_ended(webhook_settings, db, run["id"])

    keys = [r.headers["idempotency-key"] for r in sink.requests]
    assert sorted(keys) == sorted(f"{run['id']}:{i}" for i in range(40))
    message = next(r.json() for r in sink.requests if r.json()["person_id"] == "p7")
    assert message["recipient"] == "user7@example.com"
    assert message["campaign_id"] == campaign["id"] and message["brand_id"] == "brand-a"
    rows = await deliveries(db, run["id"])
    assert rows[7]["provider_message_id"] == f"hook-{run['id']}:7"
    assert (await run_row(db, run["id"]))["sent_count"] == 40


async def test_smtp_provider_delivers_the_rendered_email(client, db, settings):
    with SmtpSink() as smtp:
        smtp_settings = replace(settings, email_provider="smtp", smtp_url=smtp.url())
        campaign = await create_campaign(client)
        await client.post(f"{CAMPAIGNS}/{campaign['id']}/archive", headers=bearer())
        templated = (
            await client.post(
                CAMPAIGNS,
                headers=bearer(),
                json={
                    "brand_id": "brand-a",
                    "name": "t",
                    "channel": "email",
                    "sender": "care@example.com",
                    "subject": "For {{person_id}}",
                    "body": "Hello {{recipient}}",
                },
            )
        ).json()
        await client.post(f"{CAMPAIGNS}/{templated['id']}/activate", headers=bearer())
        run = (await publish(client, templated["id"], {"recipients": recipients(3)})).json()

        await deliver_until_ended(smtp_settings, db, run["id"])

        mail = smtp.to("user1@example.com")
        assert len(mail) == 1 and len(smtp.messages) == 3
        assert mail[0].message["Subject"] == "For p1"
        assert mail[0].message.get_content().strip() == "Hello user1@example.com"
        assert mail[0].message["From"] == "care@example.com"
    assert (await run_row(db, run["id"]))["sent_count"] == 3


async def test_transient_failure_is_retried_then_sent(client, db, webhook_settings, sink):
    campaign = await create_campaign(client)
    sink.replies["user1@example.com"] = Reply(status=503, body=b"busy")
    run = (await publish(client, campaign["id"], {"recipients": recipients(3)})).json()
    slow_retry = replace(webhook_settings, delivery_retry_base_seconds=60)

    await drain(slow_retry)

    first = (await deliveries(db, run["id"]))[1]
    assert (first["status"], first["attempts"]) == ("pending", 1)
    assert first["last_error"].startswith("HTTP 503")
    assert await run_status(db, run["id"]) == "running"
    # Waits measured from the attempt (updated_at, the now() its not_before was counted
    # from), not from this check, which a loaded machine may delay by seconds.
    follow_up = await db.fetchrow(
        "SELECT args, scheduled_at - $1::timestamptz AS wait FROM procrastinate_jobs"
        " WHERE status = 'todo' AND task_name = 'deliver_batch'",
        first["updated_at"],
    )
    assert follow_up["args"] == {"run_id": run["id"], "first": 0, "last": 2}
    assert 29 < follow_up["wait"].total_seconds() < 91  # 60 s +-50% jitter

    backoff = first["not_before"] - first["updated_at"]
    assert timedelta(seconds=29) < backoff < timedelta(seconds=91)  # its backoff
    del sink.replies["user1@example.com"]
    # The backoff has passed: the follow-up job and the delivery are due.
    await db.execute("UPDATE procrastinate_jobs SET scheduled_at = now() WHERE status = 'todo'")
    await db.execute("UPDATE deliveries SET not_before = now() WHERE not_before IS NOT NULL")
    await deliver_until_ended(slow_retry, db, run["id"])

    retried = (await deliveries(db, run["id"]))[1]
    assert (retried["status"], retried["attempts"]) == ("sent", 2)
    attempts = [r for r in sink.requests if r.json()["recipient"] == "user1@example.com"]
    assert len(attempts) == 2
    assert {r.headers["idempotency-key"] for r in attempts} == {f"{run['id']}:1"}
    await assert_counters_equal_rows(db, run["id"])


async def test_permanent_failure_fails_at_once(client, db, webhook_settings, sink):
    campaign = await create_campaign(client)
    sink.replies["user0@example.com"] = Reply(status=400, body=b'{"error":"bad number"}')
    run = (await publish(client, campaign["id"], {"recipients": recipients(2)})).json()

    await deliver_until_ended(webhook_settings, db, run["id"])

    failed = (await deliveries(db, run["id"]))[0]
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert "400" in failed["last_error"] and "bad number" in failed["last_error"]
    final = await run_row(db, run["id"])
    assert (final["status"], final["sent_count"], final["failed_count"]) == ("completed", 1, 1)


async def test_transient_failures_fail_after_the_last_attempt(client, db, webhook_settings, sink):
    campaign = await create_campaign(client)
    sink.replies["user0@example.com"] = Reply(status=500, body=b"down")
    run = (await publish(client, campaign["id"], {"recipients": recipients(1)})).json()

    await deliver_until_ended(webhook_settings, db, run["id"])

    failed = (await deliveries(db, run["id"]))[0]
    assert (failed["status"], failed["attempts"]) == ("failed", 3)
    assert failed["last_error"].startswith("gave up after 3 attempts; last: HTTP 500")
    assert len(sink.requests) == 3
    assert (await run_row(db, run["id"]))["failed_count"] == 1


async def test_suppression_added_after_publish_is_honoured(client, db, webhook_settings, sink):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(5)})).json()
    await db.execute(
        "INSERT INTO suppressions (brand_id, address, reason)"
        " VALUES ('brand-a', 'user2@example.com', 'complained')"
    )

    await deliver_until_ended(webhook_settings, db, run["id"])

    skipped = (await deliveries(db, run["id"]))[2]
    assert (skipped["status"], skipped["reason"], skipped["attempts"]) == (
        "skipped",
        "suppressed",
        0,
    )
    assert "user2@example.com" not in {r.json()["recipient"] for r in sink.requests}
    assert len(sink.requests) == 4
    await assert_counters_equal_rows(db, run["id"])


async def test_suppression_added_mid_run_stops_the_sends_not_yet_made(
    client, db, webhook_settings, sink
):
    campaign = await create_campaign(client)
    sink.default = Reply(delay=0.05)
    run = (await publish(client, campaign["id"], {"recipients": recipients(30)})).json()
    slow = replace(webhook_settings, worker_concurrency=2)
    worker = asyncio.create_task(deliver_until_ended(slow, db, run["id"]))
    await until(lambda: len(sink.requests) >= 4)
    await db.execute(
        "INSERT INTO suppressions (brand_id, address, reason)"
        " VALUES ('brand-a', 'user29@example.com', 'unsubscribed')"
    )

    await worker

    last = (await deliveries(db, run["id"]))[29]
    assert (last["status"], last["reason"]) == ("skipped", "suppressed")
    assert "user29@example.com" not in {r.json()["recipient"] for r in sink.requests}


async def test_cancel_mid_run_stops_every_send_not_claimed_before_it_committed(
    client, live_server, db, webhook_settings, sink
):
    campaign = await create_campaign(client)
    sink.default = Reply(delay=0.05)
    run = (await publish(client, campaign["id"], {"recipients": recipients(60)})).json()
    worker = asyncio.create_task(
        deliver_until_ended(replace(webhook_settings, worker_concurrency=4), db, run["id"])
    )
    await until(lambda: len(sink.requests) >= 8)

    # Through a real server: the in-process client would block this loop, and the worker.
    async with httpx.AsyncClient(base_url=live_server, headers=bearer()) as http:
        response = await http.post(f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/cancel")
    received_at_cancel = len(sink.requests)
    await worker
    await asyncio.sleep(0.2)  # a late send would have arrived by now

    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled" and cancelled["completed_at"] is not None
    # At most the one window (4) that had claimed its deliveries before the cancel.
    assert len(sink.requests) - received_at_cancel <= 4
    rows = await deliveries(db, run["id"])
    assert {r["status"] for r in rows} == {"sent", "skipped"}
    assert {r["reason"] for r in rows if r["status"] == "skipped"} == {"cancelled"}
    counts = await assert_counters_equal_rows(db, run["id"])
    # Every delivery that reached the receiver says so, those sent while the cancel
    # committed too: they moved from the cancel's skipped count to the sent one.
    assert counts["sent"] == len(sink.requests) == len(delivery_ids(sink))
    assert 0 <= cancelled["skipped_count"] - counts["skipped"] <= 4
    assert counts["sent"] + counts["skipped"] == 60
    again = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/cancel", headers=bearer()
    )
    assert again.status_code == 412
    assert again.json()["details"] == {
        "status": "cancelled",
        "allowed": ["scheduled", "queued", "running"],
    }


async def test_cancel_of_a_completed_run_is_412(client, db, settings):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(2)})).json()
    await deliver_until_ended(settings, db, run["id"])

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/cancel", headers=bearer()
    )

    assert response.status_code == 412
    assert response.json()["details"]["status"] == "completed"


async def test_cancel_needs_the_publish_scope_and_the_brand(client):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(1)})).json()
    url = f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}/cancel"

    assert (
        await client.post(url, headers=bearer(scopes=["messaging:campaigns:read"]))
    ).status_code == 403
    assert (await client.post(url, headers=bearer(brands=["brand-b"]))).status_code == 404


async def test_run_of_only_skipped_recipients_completes(client, db, settings):
    campaign = await create_campaign(client)
    body = {"recipients": [{"person_id": "1", "recipient": "bad"}]}
    run = (await publish(client, campaign["id"], body)).json()

    await deliver_until_ended(settings, db, run["id"])

    final = await run_row(db, run["id"])
    assert (final["status"], final["skipped_count"]) == ("completed", 1)


async def test_a_job_its_live_worker_lost_track_of_is_requeued(client, db, settings):
    """procrastinate could not record a job's end (the database was away just then): the
    job stays `doing` on a worker whose heartbeat is fresh. That worker requeues it."""
    campaign = await create_campaign(client)
    worker = asyncio.create_task(run_worker(replace(settings, stalled_job_seconds=1)))
    await until_worker_registered(db)
    worker_id = await db.fetchval("SELECT id FROM procrastinate_workers")
    caller = AccessToken(exp=datetime(2099, 1, 1, tzinfo=UTC), sub="t", brands=["*"])
    async with db.transaction():
        run = await publish_campaign(
            db, campaign["id"], [Recipient("1", "a@example.com")], caller,
            max_recipients=10, batch_size=10,
        )  # fmt: skip
        await db.execute(
            "UPDATE procrastinate_jobs SET status = 'doing', worker_id = $1", worker_id
        )
        await db.execute(
            "UPDATE procrastinate_events SET at = now() - interval '10 seconds'"
            " WHERE type = 'started'"
        )

    try:
        async with asyncio.timeout(PATIENCE):
            while await run_status(db, str(run.id)) != "completed":  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await within(PATIENCE, worker, "the worker's end once cancelled")
    assert (await deliveries(db, str(run.id)))[0]["status"] == "sent"


async def until_worker_registered(db) -> None:
    async with asyncio.timeout(PATIENCE):
        while not await db.fetchval("SELECT count(*) FROM procrastinate_workers"):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
