"""Liquid's `size`, `first` and `last` read an array (or a string) of a recipient's data:
`{{ data.visits.size }}` needs `visits`, not a key `size` inside it. A recipient whose
`visits` is an array is published and previewed, not skipped as missing data."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from app.domain.templates import CampaignTemplates
from tests.helpers import CAMPAIGNS, create_campaign, publish, walk
from tests.tokens import bearer

BODY = (
    "You have {{ data.visits.size }} visits; the next at {{ data.visits.first.time }},"
    " the last at {{ data.visits.last.time }}. {{ data.name.size }} letters."
)
VISITS = [{"time": "9:00"}, {"time": "15:30"}]


def person(n: int, data: Any) -> dict[str, Any]:
    return {"person_id": f"p{n}", "recipient": f"user{n}@example.com", "data": data}


async def test_a_recipient_whose_array_has_the_size_the_template_reads_is_published(client):
    campaign = await create_campaign(client, body=BODY)
    people = [
        person(0, {"visits": VISITS, "name": "Ana"}),
        person(1, {"name": "Bo"}),  # no visits at all: missing
        person(2, {"visits": {"size": 2, "first": {"time": "8:00"}}, "name": "Cy"}),  # keys
    ]

    response = await publish(client, campaign["id"], {"recipients": people})

    assert response.status_code == 202, response.text
    listed = await walk(
        client, f"{CAMPAIGNS}/{campaign['id']}/runs/{response.json()['id']}/deliveries", bearer()
    )
    assert [(d["status"], d["reason"]) for d in listed] == [
        ("pending", None),
        ("skipped", "missing_data"),
        ("skipped", "missing_data"),  # an object without `last`
    ]


async def test_preview_renders_size_first_and_last_of_an_array(client):
    campaign = await create_campaign(client, body=BODY)

    response = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/preview",
        json={
            "person_id": "p0",
            "recipient": "a@example.com",
            "data": person(0, {"visits": VISITS, "name": "Ana"})["data"],
        },
        headers=bearer(brands=["brand-a"]),
    )

    assert response.status_code == 200, response.text
    assert response.json()["body"] == (
        "You have 2 visits; the next at 9:00, the last at 15:30. 3 letters."
    )


@pytest.mark.parametrize(
    "data",
    [
        {"visits": VISITS, "name": "Ana"},
        {"visits": [], "name": ""},
        {"visits": "9:00", "name": "Ana"},
        {"visits": {"size": 1, "first": {"time": 1}, "last": {"time": 2}}, "name": "Ana"},
        {"visits": {"size": 1, "first": {}, "last": {"time": 2}}, "name": "Ana"},
        {"visits": {"first": 1}, "name": "Ana"},
        {"visits": VISITS, "name": {"size": 3}},
        {"visits": VISITS, "name": 3},
        {"visits": None, "name": "Ana"},
        {"name": "Ana"},
    ],
)
def test_the_check_at_publish_agrees_with_the_check_of_objects(data):
    compiled = CampaignTemplates.compile(None, BODY)

    assert compiled.present_in_json(msgspec.json.encode(data)) == (compiled.missing(data) is None)
