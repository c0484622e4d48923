"""Creating campaigns and moving them draft -> active -> archived."""

from __future__ import annotations

from tests.helpers import CAMPAIGNS, create_campaign
from tests.tokens import bearer

EMAIL = {
    "brand_id": "brand-a",
    "name": "Flu shots",
    "channel": "email",
    "subject": "Flu season",
    "body": "Book your flu shot.",
}


async def test_create_answers_201_with_a_draft(client):
    response = await client.post(CAMPAIGNS, json=EMAIL, headers=bearer(sub="svc:crm"))

    assert response.status_code == 201, response.text
    campaign = response.json()
    assert set(campaign) == {
        "id",
        "brand_id",
        "name",
        "channel",
        "status",
        "sender",
        "subject",
        "body",
        "created_by",
        "created_at",
        "updated_at",
        "priority",
        "quiet_hours",
        "topic",
        "warnings",
        "html_body",
    }
    assert campaign["status"] == "draft"
    assert (campaign["topic"], campaign["warnings"]) == (None, [])  # service mail
    assert campaign["priority"] == "normal"
    assert campaign["quiet_hours"] is None
    assert campaign["created_by"] == "svc:crm"
    assert campaign["sender"] is None
    fetched = await client.get(f"{CAMPAIGNS}/{campaign['id']}", headers=bearer())
    assert fetched.json() == campaign


async def test_email_campaign_needs_a_subject(client):
    body = {k: v for k, v in EMAIL.items() if k != "subject"}

    response = await client.post(CAMPAIGNS, json=body, headers=bearer())

    assert response.status_code == 400
    assert response.json()["details"] == {"$.subject": "required for channel email"}


async def test_unknown_channel_is_400(client):
    response = await client.post(CAMPAIGNS, json={**EMAIL, "channel": "fax"}, headers=bearer())

    assert response.status_code == 400
    assert "$.channel" in response.json()["details"]


async def test_creating_for_a_brand_outside_the_token_is_403(client):
    response = await client.post(CAMPAIGNS, json=EMAIL, headers=bearer(brands=["brand-b"]))

    assert response.status_code == 403
    assert response.json()["details"] == {"brand_id": "brand-a"}


async def test_create_needs_the_write_scope(client):
    response = await client.post(
        CAMPAIGNS, json=EMAIL, headers=bearer(scopes=["messaging:campaigns:publish"])
    )
    assert response.status_code == 403


async def test_activate_then_archive(client):
    campaign = await create_campaign(client, activate=False)
    url = f"{CAMPAIGNS}/{campaign['id']}"

    active = await client.post(f"{url}/activate", headers=bearer())
    again = await client.post(f"{url}/activate", headers=bearer())
    archived = await client.post(f"{url}/archive", headers=bearer())
    archived_again = await client.post(f"{url}/archive", headers=bearer())

    assert active.status_code == 200 and active.json()["status"] == "active"
    assert active.json()["updated_at"] > campaign["updated_at"]
    assert again.status_code == 412
    assert again.json()["details"] == {"status": "active", "allowed": ["draft"]}
    assert archived.status_code == 200 and archived.json()["status"] == "archived"
    assert archived_again.status_code == 412
    assert archived_again.json()["details"] == {
        "status": "archived",
        "allowed": ["draft", "active"],
    }


async def test_activate_of_incomplete_content_is_400(client, db):
    campaign = await create_campaign(client, activate=False)
    await db.execute("UPDATE campaigns SET subject = NULL")

    response = await client.post(f"{CAMPAIGNS}/{campaign['id']}/activate", headers=bearer())

    assert response.status_code == 400
    assert "$.subject" in response.json()["details"]


async def test_status_changes_of_another_brand_are_404(client):
    campaign = await create_campaign(client, brand="brand-b", activate=False)

    for action in ("activate", "archive"):
        response = await client.post(f"{CAMPAIGNS}/{campaign['id']}/{action}", headers=bearer())
        assert response.status_code == 404


async def test_run_of_another_campaign_is_404(client):
    first = await create_campaign(client)
    second = await create_campaign(client)
    run = (
        await client.post(
            f"{CAMPAIGNS}/{first['id']}/publish",
            json={"recipients": [{"person_id": "1", "recipient": "a@example.com"}]},
            headers=bearer(),
        )
    ).json()

    response = await client.get(f"{CAMPAIGNS}/{second['id']}/runs/{run['id']}", headers=bearer())

    assert response.status_code == 404
