"""Campaign `quiet_hours` and recipients' `time_zone` at the API."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import CAMPAIGNS, create_campaign, publish, recipients
from tests.tokens import bearer

NIGHT = {"start": "21:00", "end": "08:00", "time_zone": "America/New_York"}
EMAIL = {
    "brand_id": "brand-a",
    "name": "Reminder",
    "channel": "sms",
    "body": "Your appointment is tomorrow.",
}


async def test_quiet_hours_are_set_at_create_changed_and_cleared_while_draft(client):
    created = await client.post(CAMPAIGNS, json={**EMAIL, "quiet_hours": NIGHT}, headers=bearer())
    assert created.status_code == 201, created.text
    campaign = created.json()
    assert campaign["quiet_hours"] == NIGHT
    url = f"{CAMPAIGNS}/{campaign['id']}"

    lunch = {"start": "12:00", "end": "13:30", "time_zone": "Europe/Berlin"}
    changed = await client.patch(url, json={"quiet_hours": lunch}, headers=bearer())
    untouched = await client.patch(url, json={"name": "Other"}, headers=bearer())
    read = await client.get(url, headers=bearer())
    cleared = await client.patch(url, json={"quiet_hours": None}, headers=bearer())

    assert changed.status_code == 200 and changed.json()["quiet_hours"] == lunch
    assert untouched.json()["quiet_hours"] == lunch
    assert read.json()["quiet_hours"] == lunch
    assert cleared.json()["quiet_hours"] is None
    listed = (await client.get(CAMPAIGNS, headers=bearer())).json()["items"]
    assert listed[0]["quiet_hours"] is None


async def test_quiet_hours_of_an_active_campaign_cannot_change(client):
    campaign = await create_campaign(client)

    response = await client.patch(
        f"{CAMPAIGNS}/{campaign['id']}", json={"quiet_hours": NIGHT}, headers=bearer()
    )

    assert response.status_code == 412


@pytest.mark.parametrize(
    ("quiet_hours", "path"),
    [
        ({**NIGHT, "start": "24:00"}, "$.quiet_hours.start"),
        ({**NIGHT, "end": "8:00"}, "$.quiet_hours.end"),
        ({**NIGHT, "end": "08:00:00"}, "$.quiet_hours.end"),
        ({**NIGHT, "end": "21:00"}, "$.quiet_hours.end"),  # an empty window
        ({**NIGHT, "time_zone": "America/Gotham"}, "$.quiet_hours.time_zone"),
        ({**NIGHT, "time_zone": "EST-5"}, "$.quiet_hours.time_zone"),
        # Files of a zoneinfo directory that are no place: the host's own zone, tzdata's
        # "not set" placeholder.
        ({**NIGHT, "time_zone": "localtime"}, "$.quiet_hours.time_zone"),
        ({**NIGHT, "time_zone": "posixrules"}, "$.quiet_hours.time_zone"),
        ({**NIGHT, "time_zone": "Factory"}, "$.quiet_hours.time_zone"),
        ({**NIGHT, "time_zone": "posix/America/New_York"}, "$.quiet_hours.time_zone"),
        ({**NIGHT, "time_zone": "America/New_York\u0000"}, "$.quiet_hours.time_zone"),
        ({"start": "21:00", "end": "08:00"}, "$.quiet_hours"),
        ({**NIGHT, "days": "weekdays"}, "$.quiet_hours"),
        ("21:00-08:00", "$.quiet_hours"),
    ],
)
async def test_bad_quiet_hours_are_400_naming_the_path(client, quiet_hours, path):
    created = await client.post(
        CAMPAIGNS, json={**EMAIL, "quiet_hours": quiet_hours}, headers=bearer()
    )
    draft = (await client.post(CAMPAIGNS, json=EMAIL, headers=bearer())).json()
    patched = await client.patch(
        f"{CAMPAIGNS}/{draft['id']}", json={"quiet_hours": quiet_hours}, headers=bearer()
    )

    for response in (created, patched):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "validation_error"
        assert list(response.json()["details"]) == [path]


async def test_a_recipients_time_zone_is_kept_with_its_delivery(client, db):
    campaign = await create_campaign(client, channel="sms")
    people = [
        {"person_id": "a", "recipient": "+15550000001", "time_zone": "America/Chicago"},
        {"person_id": "b", "recipient": "+15550000002"},
        {"person_id": "c", "recipient": "+15550000001", "time_zone": "Asia/Tokyo"},  # duplicate
    ]

    response = await publish(client, campaign["id"], {"recipients": people})

    assert response.status_code == 202, response.text
    rows = await db.fetch(
        "SELECT position, status, time_zone, not_before FROM deliveries WHERE run_id = $1"
        " ORDER BY position",
        uuid.UUID(response.json()["id"]),
    )
    assert [(r["status"], r["time_zone"]) for r in rows] == [
        ("pending", "America/Chicago"),
        ("pending", None),
        ("skipped", None),  # settled at publish: no zone needed
    ]
    assert {r["not_before"] for r in rows} == {None}


async def test_unknown_recipient_zones_are_400_with_their_paths_and_nothing_is_created(client, db):
    campaign = await create_campaign(client)
    people = recipients(250)
    for i in range(0, 250, 2):
        people[i]["time_zone"] = "Europe/Atlantis"
    people[1]["time_zone"] = "Europe/Lisbon"

    response = await publish(client, campaign["id"], {"recipients": people})

    assert response.status_code == 400
    details = response.json()["details"]
    assert len(details) == 100
    assert list(details)[:3] == [f"$.recipients[{i}].time_zone" for i in (0, 2, 4)]
    assert "125 recipients" in response.json()["message"]
    assert await db.fetchval("SELECT count(*) FROM runs") == 0


@pytest.mark.parametrize("zone", ["localtime", "posixrules", "Factory", "right/UTC"])
async def test_a_recipient_zone_that_is_the_hosts_or_no_place_is_400(client, db, zone):
    campaign = await create_campaign(client)
    people = [{"person_id": "a", "recipient": "a@example.com", "time_zone": zone}]

    response = await publish(client, campaign["id"], {"recipients": people})

    assert response.status_code == 400
    assert list(response.json()["details"]) == ["$.recipients[0].time_zone"]
    assert await db.fetchval("SELECT count(*) FROM runs") == 0


@pytest.mark.parametrize("zone", ["US/Eastern", "Etc/GMT-14", "UTC", "Pacific/Kiritimati"])
async def test_aliases_and_fixed_zones_of_the_iana_database_are_accepted(client, zone):
    campaign = await create_campaign(client)
    people = [{"person_id": "a", "recipient": "a@example.com", "time_zone": zone}]

    response = await publish(client, campaign["id"], {"recipients": people})

    assert response.status_code == 202, response.text


@pytest.mark.parametrize("zone", ["", "x" * 65, 5])
async def test_a_malformed_recipient_zone_is_400(client, zone):
    campaign = await create_campaign(client)
    people = [{"person_id": "a", "recipient": "a@example.com", "time_zone": zone}]

    response = await publish(client, campaign["id"], {"recipients": people})

    assert response.status_code == 400
    assert list(response.json()["details"]) == ["$.recipients[0].time_zone"]
