"""The audit trail in the worker: a real worker's 21610 from Twilio (its stand-in) is a
suppression recorded as Twilio's, sends write nothing to the trail, and the maintenance
keeps month partitions ahead and drops those past AUDIT_RETENTION_DAYS, whole."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from app.domain.access import AUDIT_READ
from db.pool import create_pool
from jobs.retention import add_months, maintain_audit, month_of
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioReply, TwilioStandIn
from tests.helpers import create_campaign, publish, recipients, walk
from tests.jobs.delivery_helpers import deliver_until_ended, deliveries
from tests.tokens import bearer

PATIENT = "+15557654321"
OTHER = "+15557000001"
AUDIT = "/v1/messaging/brands/brand-a/audit"


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn() as twilio:
        yield twilio


@pytest.fixture
def settings(settings, twilio):
    return replace(
        settings,
        sms_provider="twilio",
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_api_url=twilio.url,
        public_base_url="http://testserver.local",
        delivery_retry_base_seconds=0.01,
        worker_concurrency=4,
    )


async def test_a_21610_is_a_suppression_by_twilio_and_sends_write_nothing(
    client, db, settings, twilio
):
    twilio.replies[PATIENT] = TwilioReply(400, 21610, "Attempt to send to unsubscribed recipient")
    campaign = await create_campaign(client, channel="sms")
    people = [{"person_id": f"p{i}", "recipient": n} for i, n in enumerate((OTHER, PATIENT))]
    run = (await publish(client, campaign["id"], {"recipients": people})).json()
    email = await create_campaign(client)
    mails = (await publish(client, email["id"], {"recipients": recipients(20)})).json()

    await deliver_until_ended(settings, db, run["id"])
    await deliver_until_ended(settings, db, mails["id"])

    assert [d["status"] for d in await deliveries(db, run["id"])] == ["sent", "failed"]
    items = await walk(client, AUDIT, bearer(scopes=[AUDIT_READ]))
    # The API's changes (two campaigns created and activated, two runs published), and of
    # the worker's work only Twilio's word: 21 sends wrote nothing.
    assert [(i["action"], i["actor"]) for i in items] == [
        ("suppression.created", "provider:twilio"),
        ("run.published", "service:test"),
        ("campaign.activated", "service:test"),
        ("campaign.created", "service:test"),
        ("run.published", "service:test"),
        ("campaign.activated", "service:test"),
        ("campaign.created", "service:test"),
    ]
    twilios = items[0]
    assert (twilios["target_type"], twilios["target_id"]) == ("suppression", PATIENT)
    assert twilios["request_id"] is None  # no request: the worker's
    assert twilios["changes"] == {
        "reason": {"old": None, "new": "unsubscribed"},
        "source": {"old": None, "new": "provider:twilio"},
        "topic": None,
    }


async def months(db) -> list[date]:
    rows = await db.fetch(
        "SELECT to_date(substring(c.relname FROM 14), 'YYYY_MM') AS month"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit_events'::regclass ORDER BY 1"
    )
    return [row["month"] for row in rows]


async def test_maintenance_keeps_months_ahead_and_drops_whole_months_past_retention(
    database_url, db
):
    now = datetime(2026, 12, 15, tzinfo=UTC)
    for month in (date(2019, 1, 1), date(2020, 12, 1)):
        await db.execute("SELECT audit_events_ensure_partition($1)", month)
    for at in (datetime(2019, 1, 15, tzinfo=UTC), datetime(2020, 12, 31, 23, tzinfo=UTC)):
        await db.execute(
            "INSERT INTO audit_events (occurred_at, brand_id, actor, action, target_type,"
            " target_id) VALUES ($1, 'brand-a', 'ops', 'rate_limit.updated', 'rate_limit',"
            " 'brand-a')",
            at,
        )
    ahead = [add_months(month_of(now), n) for n in range(4)]
    for month in ahead[2:]:  # missing: the maintenance makes them again
        await db.execute(f"DROP TABLE IF EXISTS audit_events_{month:%Y_%m}")
    pool = await create_pool(database_url)
    try:
        # Six years (2190 days) before now is 2020-12-16: January 2019 is wholly older
        # and goes; December 2020 still holds changes to keep, and stays whole.
        report = await maintain_audit(pool, timedelta(days=2190), now=now)
        assert report.dropped == ["audit_events_2019_01"]
        assert report.created == [f"audit_events_{m:%Y_%m}" for m in ahead[2:]]
        assert set(ahead) <= set(await months(db))
        assert await db.fetchval("SELECT count(*) FROM audit_events") == 1
        # Once the cutoff passes the end of December 2020, it goes too.
        later = datetime(2027, 1, 2, tzinfo=UTC)
        report = await maintain_audit(pool, timedelta(days=2190), now=later)
    finally:
        await pool.close()

    assert report.dropped == ["audit_events_2020_12"]
    assert await db.fetchval("SELECT count(*) FROM audit_events") == 0
    assert min(await months(db)) > date(2020, 12, 1)
