"""The audit trail: every change, through the API and the real PostgreSQL, leaves exactly
one row in the transaction that made it (none if it rolled back), read back through
GET /v1/messaging/brands/{brand_id}/audit; the table refuses to be rewritten."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.domain.access import AUDIT_READ, PUBLISH, READ, WRITE
from app.http.asgi import create_app
from db.suppressions import NewSuppression, SuppressionRepository
from tests.fakes.twilio import AUTH_TOKEN, signed_form
from tests.helpers import CAMPAIGNS, create_campaign, publish, recipients, walk
from tests.tokens import bearer

BRAND = "brand-a"
AUDIT = f"/v1/messaging/brands/{BRAND}/audit"
SUPPRESSIONS = f"/v1/messaging/brands/{BRAND}/suppressions"
ALL = (READ, WRITE, PUBLISH, AUDIT_READ)
WEBHOOK_SECRET = "provider-secret"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
BASE = "http://testserver.local"  # the test client's origin: PUBLIC_BASE_URL for Twilio
INBOUND = "/v1/messaging/providers/twilio/inbound"


def as_(sub: str, request_id: str | None = None, **token: Any) -> dict[str, str]:
    """Headers of a caller `sub` with every scope, sending X-Request-ID `request_id`."""
    headers = bearer(sub=sub, brands=[BRAND], scopes=ALL, **token)
    return headers | ({"X-Request-ID": request_id} if request_id else {})


@pytest.fixture
async def client(settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    der = SENDGRID_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    app = create_app(
        replace(
            settings,
            webhook_secret=WEBHOOK_SECRET,
            sendgrid_webhook_public_key=base64.b64encode(der).decode(),
            twilio_auth_token=AUTH_TOKEN,
            public_base_url=BASE,
        )
    )
    async with AsyncTestClient(app=app) as client:
        yield client


async def trail(client: Any, **filters: Any) -> list[dict[str, Any]]:
    """The brand's whole audit trail (newest first), page by page."""
    return await walk(client, AUDIT, as_("auditor"), **filters)


def summary(items: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [(i["action"], i["actor"], i["target_type"], i["target_id"]) for i in items]


async def count(db: asyncpg.Connection) -> int:
    n: int = await db.fetchval("SELECT count(*) FROM audit_events")
    return n


# Campaigns


async def test_a_campaigns_creation_edit_activation_and_archival_are_four_rows_by_their_caller(
    client,
):
    created = await client.post(
        CAMPAIGNS,
        json={
            "brand_id": BRAND,
            "name": "Flu shots",
            "channel": "email",
            "subject": "Your flu shot, {{person_id}}",
            "body": "Book your flu shot.",
            "sender": "care@example.com",
        },
        headers=as_("alice", "req-create"),
    )
    assert created.status_code == 201, created.text
    campaign = created.json()
    url = f"{CAMPAIGNS}/{campaign['id']}"
    edited = await client.patch(
        url,
        json={"name": "Flu shots 2027", "body": "Book it now.", "priority": "high"},
        headers=as_("bob", "req-edit"),
    )
    assert edited.status_code == 200, edited.text
    same = await client.patch(url, json={"name": "Flu shots 2027"}, headers=as_("bob"))
    assert same.status_code == 200  # changes nothing: no row
    activated = await client.post(f"{url}/activate", headers=as_("carol", "req-activate"))
    archived = await client.post(f"{url}/archive", headers=as_("dave", "req-archive"))
    assert activated.status_code == archived.status_code == 200

    items = await trail(client)

    target = campaign["id"]
    assert summary(items) == [
        ("campaign.archived", "dave", "campaign", target),
        ("campaign.activated", "carol", "campaign", target),
        ("campaign.updated", "bob", "campaign", target),
        ("campaign.created", "alice", "campaign", target),
    ]
    assert [i["request_id"] for i in items] == [
        "req-archive", "req-activate", "req-edit", "req-create"
    ]  # fmt: skip
    assert all(i["brand_id"] == BRAND for i in items)
    archive, activate, edit, create = (i["changes"] for i in items)
    assert archive == {"status": {"old": "active", "new": "archived"}}
    assert activate == {"status": {"old": "draft", "new": "active"}}
    # The words of the message only as changed, never what they say.
    assert edit == {
        "name": {"old": "Flu shots", "new": "Flu shots 2027"},
        "priority": {"old": "normal", "new": "high"},
        "body": {"changed": True},
    }
    assert create["name"] == {"old": None, "new": "Flu shots"}
    assert create["status"] == {"old": None, "new": "draft"}
    assert create["body"] == create["subject"] == {"changed": True}
    assert "Book" not in json.dumps(items) and "flu shot," not in json.dumps(items)
    # Newest first: ordered by when each change was made.
    times = [datetime.fromisoformat(i["occurred_at"]) for i in items]
    assert times == sorted(times, reverse=True)


# Runs


async def test_publish_retry_and_cancel_name_the_run_and_their_caller(client, db):
    campaign = await create_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": recipients(3)}, sub="pub")).json()
    # What workers leave behind: the run completed, one delivery failed.
    await db.execute(
        "UPDATE deliveries SET status = CASE position WHEN 1 THEN 'failed' ELSE 'sent' END,"
        " attempts = 1 WHERE run_id = $1",
        uuid.UUID(run["id"]),
    )
    await db.execute(
        "UPDATE runs SET status = 'completed', completed_at = now(), sent_count = 2,"
        " failed_count = 1 WHERE id = $1",
        uuid.UUID(run["id"]),
    )
    runs = f"{CAMPAIGNS}/{campaign['id']}/runs"
    retried = await client.post(f"{runs}/{run['id']}/retry", headers=as_("retrier", "req-retry"))
    assert retried.status_code == 202, retried.text
    retry = retried.json()
    cancelled = await client.post(f"{runs}/{retry['id']}/cancel", headers=as_("canceller"))
    assert cancelled.status_code == 200, cancelled.text

    items = await trail(client, target_id=retry["id"])
    assert summary(items) == [
        ("run.cancelled", "canceller", "run", retry["id"]),
        ("run.published", "retrier", "run", retry["id"]),
    ]
    cancel, published = (i["changes"] for i in items)
    assert cancel == {"status": {"old": "queued", "new": "cancelled"}, "cancelled": 1}
    assert published == {
        "campaign_id": {"old": None, "new": campaign["id"]},
        "status": {"old": None, "new": "queued"},
        "total_recipients": {"old": None, "new": 1},
        "skipped_count": {"old": None, "new": 0},
        "retry_of": {"old": None, "new": run["id"]},
    }
    assert items[1]["request_id"] == "req-retry"
    (first,) = await trail(client, target_id=run["id"])
    assert (first["action"], first["actor"]) == ("run.published", "pub")
    assert first["changes"]["total_recipients"] == {"old": None, "new": 3}
    assert "user1@example.com" not in json.dumps(await trail(client))  # no recipient


async def test_a_scheduled_publish_records_when_it_is_for(client):
    campaign = await create_campaign(client)
    india = timezone(timedelta(hours=5, minutes=30))
    send_at = (datetime.now(india) + timedelta(days=1)).replace(microsecond=123456)
    body = {"recipients": recipients(1), "send_at": send_at.isoformat()}
    run = (await publish(client, campaign["id"], body)).json()

    (item,) = await trail(client, action="run.published")

    assert item["target_id"] == run["id"]
    assert item["changes"]["status"] == {"old": None, "new": "scheduled"}
    scheduled = item["changes"]["scheduled_for"]["new"]
    assert datetime.fromisoformat(scheduled) == send_at
    assert scheduled == run["scheduled_for"]  # spelled as the run is, in UTC


# Suppressions, from every source


async def test_suppressions_put_and_deleted_through_the_api(client):
    address = "Ann@Example.com"
    put = await client.put(
        f"{SUPPRESSIONS}/{address}", json={"reason": "manual"}, headers=as_("ops", "r1")
    )
    assert put.status_code == 200
    again = await client.put(
        f"{SUPPRESSIONS}/{address}", json={"reason": "manual"}, headers=as_("o")
    )
    assert again.status_code == 200  # a repeat changes nothing: no row
    changed = await client.put(
        f"{SUPPRESSIONS}/{address}", json={"reason": "complained"}, headers=as_("ops2")
    )
    assert changed.status_code == 200
    topic = f"/v1/messaging/brands/{BRAND}/topics/news/suppressions/{address}"
    assert (await client.put(topic, json={"reason": "unsubscribed"}, headers=as_("t"))).is_success
    deleted = await client.delete(f"{SUPPRESSIONS}/{address}", headers=as_("ops3", "r4"))
    assert deleted.status_code == 204
    assert (await client.delete(f"{SUPPRESSIONS}/{address}", headers=as_("x"))).status_code == 404

    items = await trail(client, target_id="ann@example.com")  # as stored: lower-cased

    assert summary(items) == [
        ("suppression.deleted", "ops3", "suppression", "ann@example.com"),
        ("suppression.created", "t", "suppression", "ann@example.com"),
        ("suppression.created", "ops2", "suppression", "ann@example.com"),
        ("suppression.created", "ops", "suppression", "ann@example.com"),
    ]
    deleted_row, topic_row, changed_row, created_row = (i["changes"] for i in items)
    assert created_row == {
        "reason": {"old": None, "new": "manual"},
        "source": {"old": None, "new": "api"},
        "topic": None,
    }
    assert changed_row == {"reason": {"old": "manual", "new": "complained"}, "topic": None}
    assert topic_row["topic"] == "news"
    assert deleted_row == {
        "reason": {"old": "complained", "new": None},
        "source": {"old": "api", "new": None},
        "topic": None,
    }
    assert (items[0]["request_id"], items[-1]["request_id"]) == ("r4", "r1")


async def sent_run(client: Any, db: asyncpg.Connection, n: int) -> dict[str, Any]:
    campaign = await create_campaign(client)
    run: dict[str, Any] = (
        await publish(client, campaign["id"], {"recipients": recipients(n)})
    ).json()
    await db.execute(
        "UPDATE deliveries SET status = 'sent', attempts = 1, sent_at = now() WHERE run_id = $1",
        uuid.UUID(run["id"]),
    )
    return run


async def test_provider_feedback_suppressions_name_the_provider(client, db):
    run = await sent_run(client, db, 3)
    body = json.dumps(
        {
            "events": [
                {"delivery_id": f"{run['id']}:0", "type": "bounced",
                 "occurred_at": "2026-12-01T10:00:00Z"},
                {"delivery_id": f"{run['id']}:1", "type": "delivered",
                 "occurred_at": "2026-12-01T10:00:00Z"},
            ]
        }
    ).encode()  # fmt: skip
    digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    webhook = await client.post(
        "/v1/messaging/providers/webhook/events",
        content=body,
        headers={"X-Signature": f"sha256={digest}", "Content-Type": "application/json"},
    )
    assert webhook.status_code == 200, webhook.text
    sendgrid = json.dumps(
        [{"event": "spamreport", "timestamp": int(time.time()), "delivery_id": f"{run['id']}:2"}]
    ).encode()
    timestamp = str(int(time.time()))
    signature = SENDGRID_KEY.sign(timestamp.encode() + sendgrid, ec.ECDSA(hashes.SHA256()))
    fed = await client.post(
        "/v1/messaging/providers/sendgrid/events",
        content=sendgrid,
        headers={
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        },
    )
    assert fed.status_code == 200, fed.text

    items = await trail(client, action="suppression.created")

    assert summary(items) == [
        ("suppression.created", "provider:sendgrid", "suppression", "user2@example.com"),
        ("suppression.created", "provider:webhook", "suppression", "user0@example.com"),
    ]
    assert items[0]["changes"]["reason"] == {"old": None, "new": "complained"}
    assert items[1]["changes"]["reason"] == {"old": None, "new": "bounced"}


async def test_a_one_click_unsubscribe_is_the_recipients_own(client):
    keys = client.app.state.unsubscribe_keys
    run_id = uuid.uuid4()
    token = keys.token(brand_id=BRAND, topic="news", address="ann@example.com", run_id=run_id)
    link = f"/v1/messaging/unsubscribe/{token}"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for _ in range(2):  # the repeat changes nothing
        response = await client.post(link, content=b"List-Unsubscribe=One-Click", headers=form)
        assert response.status_code == 200

    (item,) = await trail(client)

    assert summary([item]) == [
        ("suppression.created", "recipient", "suppression", "ann@example.com")
    ]
    assert item["changes"] == {
        "reason": {"old": None, "new": "unsubscribed"},
        "source": {"old": None, "new": "one_click"},
        "run_id": {"old": None, "new": str(run_id)},
        "topic": "news",
    }
    assert item["request_id"]  # the request's id, given or made


async def test_sms_stop_and_start_are_the_recipients_own(client):
    await create_campaign(client, channel="sms")
    patient = "+15557654321"
    for word in ("STOP", "START"):
        form = {"MessageSid": f"SM{uuid.uuid4().hex}", "From": patient, "To": "+15550000000",
                "Body": word}  # fmt: skip
        content, headers = signed_form(BASE + INBOUND, form)
        response = await client.post(INBOUND, content=content, headers=headers)
        assert response.status_code == 200, response.text

    items = await trail(client, actor="recipient")

    assert summary(items) == [
        ("suppression.deleted", "recipient", "suppression", patient),
        ("suppression.created", "recipient", "suppression", patient),
    ]
    assert items[1]["changes"]["source"] == {"old": None, "new": "sms_stop"}
    assert items[0]["changes"]["source"] == {"old": "sms_stop", "new": None}


# Rate limits


async def test_a_rate_limit_put_records_old_and_new_caps(client):
    url = f"/v1/messaging/brands/{BRAND}/rate-limit"
    first = {"email_per_second": 10.0, "sms_per_second": None}
    assert (await client.put(url, json=first, headers=as_("ops", "rl1"))).status_code == 200
    assert (await client.put(url, json=first, headers=as_("ops"))).status_code == 200  # repeat
    second = {"email_per_second": 5.0, "sms_per_second": 2.0}
    assert (await client.put(url, json=second, headers=as_("ops2"))).status_code == 200

    items = await trail(client)

    assert summary(items) == [
        ("rate_limit.updated", "ops2", "rate_limit", BRAND),
        ("rate_limit.updated", "ops", "rate_limit", BRAND),
    ]
    assert items[0]["changes"] == {
        "email_per_second": {"old": 10.0, "new": 5.0},
        "sms_per_second": {"old": None, "new": 2.0},
    }
    assert items[1]["changes"] == {"email_per_second": {"old": None, "new": 10.0}}
    assert items[1]["request_id"] == "rl1"


# Atomicity


FAIL = """
CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'injected fault'; END $$;
"""


async def test_a_change_that_rolls_back_leaves_no_row_and_a_commit_always_has_its_row(db):
    entry = NewSuppression(BRAND, "ann@example.com", "manual")

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        async with db.transaction():
            await SuppressionRepository(db).add([entry], "api", sub="ops")
            assert await count(db) == 1  # written, inside the transaction
            raise Crash

    assert await count(db) == 0
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    async with db.transaction():
        await SuppressionRepository(db).add([entry], "api", sub="ops")
    assert await db.fetchval("SELECT actor FROM audit_events") == "ops"


async def test_a_publish_failing_at_commit_leaves_no_row(client, db):
    campaign = await create_campaign(client)
    before = await count(db)
    await db.execute(FAIL)
    # A deferred constraint trigger fires at COMMIT, after the audit row was written.
    await db.execute(
        "CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON runs"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail()"
    )

    response = await publish(client, campaign["id"], {"recipients": recipients(3)})

    assert response.status_code == 500
    assert await count(db) == before
    assert await db.fetchval("SELECT count(*) FROM runs") == 0


async def test_a_change_whose_audit_row_fails_is_not_made(client, db):
    await db.execute(FAIL)
    await db.execute(
        "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION fail()"
    )

    created = await client.post(
        CAMPAIGNS,
        json={
            "brand_id": BRAND,
            "name": "n",
            "channel": "sms",
            "body": "b",
            "sender": "+15550000000",
        },
        headers=as_("alice"),
    )
    put = await client.put(f"{SUPPRESSIONS}/ann@example.com", json={"reason": "manual"},
                           headers=as_("alice"))  # fmt: skip

    assert created.status_code == put.status_code == 500
    assert await db.fetchval("SELECT count(*) FROM campaigns") == 0
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_a_publish_whose_audit_row_fails_makes_no_run(client, db):
    campaign = await create_campaign(client)
    await db.execute(FAIL)
    await db.execute(
        "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION fail()"
    )

    response = await publish(client, campaign["id"], {"recipients": recipients(2)})

    assert response.status_code == 500
    assert await db.fetchval("SELECT count(*) FROM runs") == 0
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 0
    assert await db.fetchval("SELECT count(*) FROM procrastinate_jobs") == 0


async def test_every_committed_change_has_exactly_its_row(client, db):
    campaign = await create_campaign(client)  # created and activated
    for n in range(3):
        assert (await publish(client, campaign["id"], {"recipients": recipients(n + 1)})).is_success
    rows = await db.fetch("SELECT action, target_id FROM audit_events")
    runs = await db.fetch("SELECT id FROM runs")
    assert sorted(r["action"] for r in rows) == [
        "campaign.activated", "campaign.created", *["run.published"] * 3
    ]  # fmt: skip
    assert {r["target_id"] for r in rows if r["action"] == "run.published"} == {
        str(r["id"]) for r in runs
    }


# Append-only


async def test_the_table_refuses_updates_deletes_and_truncation(client, db):
    await create_campaign(client, activate=False)
    for statement in (
        "UPDATE audit_events SET actor = 'someone else'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await db.execute(statement)
    # A partition too: the trigger is on each of them.
    partition = await db.fetchval("SELECT tableoid::regclass::text FROM audit_events LIMIT 1")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute(f'DELETE FROM "{partition}"')
    assert await db.fetchval("SELECT actor FROM audit_events") == "service:test"


# Reading it


async def test_reading_needs_the_audit_scope_and_another_brands_trail_is_not_found(client):
    await create_campaign(client)
    without = await client.get(AUDIT, headers=bearer(brands=[BRAND]))  # every other scope
    assert without.status_code == 403
    assert without.json()["error"] == "forbidden"
    other = await client.get(
        "/v1/messaging/brands/brand-b/audit", headers=bearer(brands=[BRAND], scopes=ALL)
    )
    assert other.status_code == 404
    assert other.json()["error"] == "not_found"
    everyone = await client.get(AUDIT, headers=bearer(brands=["*"], scopes=[AUDIT_READ]))
    assert everyone.status_code == 200
    assert len(everyone.json()["items"]) == 2


async def test_filters_and_pages_newest_first(client, db):
    campaign = await create_campaign(client)  # created, activated: by service:test
    for address in ("a@example.com", "b@example.com", "c@example.com"):
        put = await client.put(f"{SUPPRESSIONS}/{address}", json={"reason": "manual"},
                               headers=as_("ops"))  # fmt: skip
        assert put.status_code == 200
    everything = await trail(client, limit=1)  # a page per row

    assert [i["target_id"] for i in everything] == [
        "c@example.com", "b@example.com", "a@example.com", campaign["id"], campaign["id"]
    ]  # fmt: skip
    assert [i["target_id"] for i in await trail(client, actor="ops", limit=2)] == [
        "c@example.com", "b@example.com", "a@example.com"
    ]  # fmt: skip
    assert summary(await trail(client, action="campaign.created")) == [
        ("campaign.created", "service:test", "campaign", campaign["id"])
    ]
    middle = datetime.fromisoformat(everything[1]["occurred_at"])
    assert [i["target_id"] for i in await trail(client, since=middle.isoformat())] == [
        "c@example.com", "b@example.com"
    ]  # fmt: skip
    assert [i["target_id"] for i in await trail(client, until=middle.isoformat())] == [
        "a@example.com", campaign["id"], campaign["id"]
    ]  # fmt: skip
    assert await trail(client, actor="nobody") == []
    # A cursor holds only where to resume: bound to its filters, and to nothing else.
    page = (await client.get(AUDIT, params={"actor": "ops", "limit": 1},
                             headers=as_("x"))).json()  # fmt: skip
    elsewhere = await client.get(
        AUDIT, params={"actor": "service:test", "cursor": page["next_cursor"]}, headers=as_("x")
    )
    assert elsewhere.status_code == 400
    assert elsewhere.json()["error"] == "invalid_cursor"


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"since": "0001-01-01T00:00:00+14:00"}, "query.since"),  # before year 1 in UTC
        ({"until": "9999-12-31T23:59:59-14:00"}, "query.until"),  # after year 9999 in UTC
        ({"since": "2026-12-01T00:00:00"}, "query.since"),  # no offset: which instant?
        ({"since": "yesterday"}, "query.since"),
        ({"since": "NaN"}, "query.since"),
        ({"since": "2026-12-01T00:00:00Z\x00"}, "query.since"),
        ({"since": "9" * 10_000}, "query.since"),
        ({"actor": "ops\x00"}, "query.actor"),
        ({"actor": "x" * 20_000}, "query.actor"),
        ({"target_id": "a@example.com\x00"}, "query.target_id"),
        ({"target_id": "a" * 321}, "query.target_id"),
        ({"action": "campaign.deleted"}, "query.action"),
        ({"action": "\x00"}, "query.action"),
        ({"limit": "0"}, "query.limit"),
    ],
)
async def test_extreme_filters_are_400_naming_the_parameter(client, params, named):
    response = await client.get(AUDIT, params=params, headers=as_("x"))

    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error", "message", "details"}
    assert named in body["details"]


async def test_the_extreme_instants_that_exist_are_taken(client):
    await create_campaign(client, activate=False)
    for since, until, n in (
        ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", 1),
        ("9999-12-31T23:59:59Z", None, 0),
        (None, "0001-01-01T00:00:00+00:00", 0),
    ):
        params = {k: v for k, v in (("since", since), ("until", until)) if v}
        response = await client.get(AUDIT, params=params, headers=as_("x"))
        assert response.status_code == 200, response.text
        assert len(response.json()["items"]) == n
