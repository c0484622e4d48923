"""Preview of a campaign with a topic whose body shows `{{ unsubscribe_url }}` (what its
activation asks for): the message as the recipient would get it, with a link of the real
one's length (SMS parts count it) whose token opens nothing: read scope is no way to
unsubscribe anyone."""

from __future__ import annotations

import uuid

from app.core.unsubscribe import UnsubscribeKeys
from tests.app.test_consent import topic_campaign
from tests.conftest import PUBLIC_BASE_URL
from tests.helpers import CAMPAIGNS
from tests.tokens import bearer

UNSUBSCRIBE = f"{PUBLIC_BASE_URL}/v1/messaging/unsubscribe/"
ANN = {"person_id": "p1", "recipient": "Ann@Example.com"}


async def test_preview_shows_a_link_as_long_as_the_real_one_that_opens_nothing(
    client, db, settings
):
    campaign = await topic_campaign(client, body="News. Unsubscribe: {{ unsubscribe_url }}")

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/preview", json=ANN, headers=bearer(brands=["brand-a"])
    )

    assert response.status_code == 200, response.text
    body = response.json()["body"]
    assert body.startswith(f"News. Unsubscribe: {UNSUBSCRIBE}")
    token = body.removeprefix(f"News. Unsubscribe: {UNSUBSCRIBE}")
    keys = UnsubscribeKeys.of(settings)
    assert keys is not None
    real = keys.token(
        brand_id="brand-a", topic="newsletter", address="ann@example.com", run_id=uuid.uuid4()
    )
    assert len(token) == len(real)
    used = await client.post(f"/v1/messaging/unsubscribe/{token}")
    assert used.status_code == 404
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_preview_of_an_sms_counts_the_link_in_its_parts(client):
    campaign = await topic_campaign(client, channel="sms", body="News: {{ unsubscribe_url }}")

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/preview",
        json={"person_id": "p1", "recipient": "+15551234567"},
        headers=bearer(brands=["brand-a"]),
    )

    assert response.status_code == 200, response.text
    preview = response.json()
    assert preview["body"].startswith(f"News: {UNSUBSCRIBE}")
    assert preview["sms_segments"] == -(-len(preview["body"]) // 153)


async def test_without_a_topic_there_is_no_link_to_preview_as_there_is_none_to_send(client):
    campaign = await topic_campaign(client, None, body="Reminder. {{ unsubscribe_url }}")

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/preview", json=ANN, headers=bearer(brands=["brand-a"])
    )

    assert response.status_code == 400
    assert response.json()["details"] == {"$.data": "body: unsubscribe_url is undefined"}
