"""POST /v1/messaging/campaigns/{id}/publish, as the seed and the contract specify it."""

from __future__ import annotations

import math
import uuid
from dataclasses import replace

import pytest
from litestar.testing import AsyncTestClient

from app.http.asgi import create_app
from tests.helpers import CAMPAIGNS, create_campaign, publish, recipients
from tests.tokens import bearer

SEED_RUN_FIELDS = {
    "id",
    "campaign_id",
    "brand_id",
    "status",
    "total_recipients",
    "sent_count",
    "failed_count",
    "skipped_count",
    "started_at",
    "completed_at",
    "created_by",
    "created_at",
}


async def count(db, table: str) -> int:
    return await db.fetchval(f"SELECT count(*) FROM {table}")


async def test_publish_answers_202_with_the_queued_run_and_its_location(client):
    campaign = await create_campaign(client)

    response = await publish(client, campaign["id"], {"recipients": recipients(3)}, sub="svc:crm")

    assert response.status_code == 202, response.text
    run = response.json()
    assert set(run) == SEED_RUN_FIELDS | {"retry_of", "scheduled_for"}  # second release: additive
    assert run["scheduled_for"] is None
    assert run["retry_of"] is None
    assert run["campaign_id"] == campaign["id"]
    assert run["brand_id"] == "brand-a"
    assert run["status"] == "queued"
    assert (run["total_recipients"], run["sent_count"], run["failed_count"]) == (3, 0, 0)
    assert run["skipped_count"] == 0
    assert run["started_at"] is None and run["completed_at"] is None
    assert run["created_by"] == "svc:crm"
    assert run["created_at"].endswith("Z")
    location = response.headers["location"]
    assert location == f"{CAMPAIGNS}/{campaign['id']}/runs/{run['id']}"
    fetched = await client.get(location, headers=bearer())
    assert fetched.status_code == 200
    assert fetched.json() == run


async def test_publish_commits_run_deliveries_and_one_job_per_batch(client, db):
    campaign = await create_campaign(client)
    n = 1201

    run = (await publish(client, campaign["id"], {"recipients": recipients(n)})).json()

    rows = await db.fetch(
        "SELECT position, person_id, recipient, status FROM deliveries WHERE run_id = $1"
        " ORDER BY position",
        uuid.UUID(run["id"]),
    )
    assert len(rows) == n
    assert [r["position"] for r in rows] == list(range(n))
    assert rows[7]["person_id"] == "p7" and rows[7]["recipient"] == "user7@example.com"
    assert {r["status"] for r in rows} == {"pending"}
    jobs = await db.fetch(
        "SELECT task_name, queue_name, status, args FROM procrastinate_jobs ORDER BY id"
    )
    assert len(jobs) == math.ceil(n / 500) == 3
    assert {(j["task_name"], j["queue_name"], j["status"]) for j in jobs} == {
        ("deliver_batch", "deliveries", "todo")
    }
    assert [(j["args"]["first"], j["args"]["last"]) for j in jobs] == [
        (0, 499),
        (500, 999),
        (1000, 1200),
    ]
    assert {j["args"]["run_id"] for j in jobs} == {run["id"]}


async def test_batch_size_comes_from_settings(settings, db):
    app = create_app(replace(settings, delivery_batch_size=2))
    async with AsyncTestClient(app=app) as client:
        campaign = await create_campaign(client)
        await publish(client, campaign["id"], {"recipients": recipients(5)})
    assert await count(db, "procrastinate_jobs") == 3


async def test_another_brands_suppressions_skip_nobody(client, db):
    """A brand without suppressions is not checked at all; another brand's list is not its."""
    campaign = await create_campaign(client)
    await db.execute(
        "INSERT INTO suppressions (brand_id, address, reason)"
        " VALUES ('brand-b', 'ann@example.com', 'bounced')"
    )
    body = {"recipients": [{"person_id": "1", "recipient": "ann@example.com"}]}

    run = (await publish(client, campaign["id"], body)).json()

    assert (campaign["brand_id"], run["skipped_count"]) == ("brand-a", 0)
    status = await db.fetchval(
        "SELECT status FROM deliveries WHERE run_id = $1", uuid.UUID(run["id"])
    )
    assert status == "pending"


async def test_recipients_settled_at_publish_are_skipped_with_a_reason(client, db):
    campaign = await create_campaign(client)
    await db.execute(
        "INSERT INTO suppressions (brand_id, address, reason) VALUES"
        " ('brand-a', 'gone@example.com', 'unsubscribed'),"
        " ('brand-b', 'other-brand@example.com', 'bounced')"
    )
    body = {
        "recipients": [
            {"person_id": "1", "recipient": "Ann@Example.com"},
            {"person_id": "2", "recipient": "ann@example.com"},  # same address, other case
            {"person_id": "3", "recipient": "not-an-address"},
            {"person_id": "4", "recipient": "Gone@example.com"},
            {"person_id": "5", "recipient": "other-brand@example.com"},
            {"person_id": "6", "recipient": "not-an-address"},
        ]
    }

    run = (await publish(client, campaign["id"], body)).json()

    assert run["total_recipients"] == 6
    assert run["skipped_count"] == 4
    rows = await db.fetch(
        "SELECT person_id, status, reason FROM deliveries WHERE run_id = $1 ORDER BY position",
        uuid.UUID(run["id"]),
    )
    assert [(r["person_id"], r["status"], r["reason"]) for r in rows] == [
        ("1", "pending", None),
        ("2", "skipped", "duplicate"),
        ("3", "skipped", "invalid_recipient"),
        ("4", "skipped", "suppressed"),
        ("5", "pending", None),
        ("6", "skipped", "invalid_recipient"),
    ]


async def test_sms_recipients_must_be_e164(client, db):
    campaign = await create_campaign(client, channel="sms")
    body = {
        "recipients": [
            {"person_id": "1", "recipient": "+14155550100"},
            {"person_id": "2", "recipient": "4155550100"},
            {"person_id": "3", "recipient": "+1 415 555 0100"},
            {"person_id": "4", "recipient": "someone@example.com"},
        ]
    }

    run = (await publish(client, campaign["id"], body)).json()

    reasons = await db.fetch(
        "SELECT reason FROM deliveries WHERE run_id = $1 ORDER BY position", uuid.UUID(run["id"])
    )
    assert [r["reason"] for r in reasons] == [
        None,
        "invalid_recipient",
        "invalid_recipient",
        "invalid_recipient",
    ]
    assert run["skipped_count"] == 3


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({}, "$"),
        ({"recipients": "everyone"}, "$.recipients"),
        ({"recipients": [{"person_id": "1"}]}, "$.recipients[0]"),
        (
            {
                "recipients": [
                    {"person_id": "1", "recipient": "a@example.com"},
                    {"person_id": 2, "recipient": "b@example.com"},
                ]
            },
            "$.recipients[1].person_id",
        ),
        (
            {"recipients": [{"person_id": "", "recipient": "a@example.com"}]},
            "$.recipients[0].person_id",
        ),
        ({"recipients": [{"person_id": "1", "recipient": "x" * 321}]}, "$.recipients[0].recipient"),
        ({"recipients": []}, "$.recipients"),
        ([1, 2], "$"),
    ],
)
async def test_invalid_body_is_400_with_the_offending_path_and_writes_nothing(
    client, db, body, path
):
    campaign = await create_campaign(client)

    response = await publish(client, campaign["id"], body)

    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error"] == "validation_error"
    assert error["message"]
    assert path in error["details"], error
    assert await count(db, "runs") == 0
    assert await count(db, "procrastinate_jobs") == 0


@pytest.mark.parametrize(
    "content",
    [
        b'{"recipients": [{"person_id": "a\\u0000b", "recipient": "a@example.com"}]}',
        b'{"recipients": [{"person_id": "a\xffb", "recipient": "a@example.com"}]}',
    ],
    ids=["nul", "invalid-utf8"],
)
async def test_text_the_database_cannot_store_is_400_and_writes_nothing(client, db, content):
    campaign = await create_campaign(client)

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/publish",
        content=content,
        headers={**bearer(), "Content-Type": "application/json"},
    )

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "validation_error"
    assert await count(db, "runs") == 0
    assert await count(db, "procrastinate_jobs") == 0


async def test_nul_in_a_query_parameter_is_400(client):
    response = await client.get(f"{CAMPAIGNS}?brand_id=brand%00", headers=bearer(brands=["*"]))

    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"


async def test_malformed_json_is_400(client, db):
    campaign = await create_campaign(client)

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/publish",
        content=b'{"recipients": [',
        headers={**bearer(), "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"
    assert await count(db, "runs") == 0


async def test_more_recipients_than_allowed_is_400(settings, db):
    app = create_app(replace(settings, publish_max_recipients=3))
    async with AsyncTestClient(app=app) as client:
        campaign = await create_campaign(client)
        response = await publish(client, campaign["id"], {"recipients": recipients(4)})
    assert response.status_code == 400
    assert "1 to 3" in response.json()["details"]["$.recipients"]
    assert await count(db, "runs") == 0


async def test_body_over_the_size_limit_is_413(settings, db):
    app = create_app(replace(settings, publish_max_body_bytes=1000))
    async with AsyncTestClient(app=app) as client:
        campaign = await create_campaign(client)
        response = await publish(client, campaign["id"], {"recipients": recipients(100)})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert await count(db, "runs") == 0


async def test_non_json_body_is_415(client):
    campaign = await create_campaign(client)

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/publish",
        content=b"recipients=all",
        headers={**bearer(), "Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


@pytest.mark.parametrize("campaign_id", ["0b9a7c6e-2f4d-4e1a-9c3b-5d6e7f8a9b0c", "not-a-uuid"])
async def test_unknown_campaign_is_404(client, campaign_id):
    response = await publish(client, campaign_id, {"recipients": recipients(1)})

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_campaign_of_another_brand_is_404_like_a_missing_one(client, db):
    campaign = await create_campaign(client, brand="brand-b")

    response = await publish(client, campaign["id"], {"recipients": recipients(1)})

    assert response.status_code == 404
    assert response.json()["message"] == f"campaign {campaign['id']} does not exist"
    assert await count(db, "runs") == 0


async def test_a_token_for_all_brands_may_publish_any_brand(client):
    campaign = await create_campaign(client, brand="brand-b")

    response = await publish(client, campaign["id"], {"recipients": recipients(1)}, brand="*")

    assert response.status_code == 202


async def test_draft_campaign_is_412_with_its_status(client, db):
    campaign = await create_campaign(client, activate=False)

    response = await publish(client, campaign["id"], {"recipients": recipients(1)})

    assert response.status_code == 412
    assert response.json()["error"] == "bad_state"
    assert response.json()["details"] == {"status": "draft", "allowed": ["active"]}
    assert await count(db, "runs") == 0


async def test_archived_campaign_is_412_with_its_status(client):
    campaign = await create_campaign(client)
    archived = await client.post(f"{CAMPAIGNS}/{campaign['id']}/archive", headers=bearer())
    assert archived.status_code == 200

    response = await publish(client, campaign["id"], {"recipients": recipients(1)})

    assert response.status_code == 412
    assert response.json()["details"] == {"status": "archived", "allowed": ["active"]}


async def test_publish_needs_the_publish_scope(client, db):
    campaign = await create_campaign(client)

    response = await publish(
        client,
        campaign["id"],
        {"recipients": recipients(1)},
        scopes=["messaging:campaigns:read", "messaging:campaigns:write"],
    )

    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert await count(db, "runs") == 0


async def test_unhandled_failure_is_500_with_request_id_and_no_internals(client, db):
    campaign = await create_campaign(client)
    await db.execute("ALTER TABLE deliveries RENAME TO deliveries_moved")

    response = await publish(client, campaign["id"], {"recipients": recipients(2)})

    assert response.status_code == 500
    error = response.json()
    assert error["error"] == "internal_error"
    assert error["details"]["request_id"] == response.headers["x-request-id"]
    for leak in ("deliveries", "Traceback", "asyncpg", "relation", "INSERT", "COPY"):
        assert leak not in response.text
    assert await count(db, "runs") == 0


async def test_unknown_route_answers_with_a_request_id(client):
    response = await client.get("/v1/nothing-here", headers={"X-Request-ID": "req-7"})

    assert response.status_code == 404
    assert response.headers["x-request-id"] == "req-7"
    assert response.json()["error"] == "not_found"


async def test_caller_request_id_is_echoed(client):
    response = await client.get(
        f"{CAMPAIGNS}/{uuid.uuid4()}", headers={**bearer(), "X-Request-ID": "req-42"}
    )
    assert response.headers["x-request-id"] == "req-42"


async def test_empty_body_is_400(client, db):
    campaign = await create_campaign(client)

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/publish",
        content=b"",
        headers={**bearer(), "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["details"] == {"$": "a JSON body is required"}
    assert await count(db, "runs") == 0
