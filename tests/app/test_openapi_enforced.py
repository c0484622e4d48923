"""The OpenAPI document states what the service enforces: item counts, lengths, enums,
formats, required fields and the headers. tests/app/test_properties.py then shows, with
schemathesis, that what the document forbids is refused."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from litestar.testing import AsyncTestClient

from app.http.asgi import create_app
from tests.helpers import CAMPAIGNS, create_campaign, recipients
from tests.tokens import bearer


def component(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def parameters(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    return {p["name"]: p for p in document["paths"][path][method]["parameters"]}


async def test_the_recipient_count_is_documented_from_the_setting_and_enforced_there(settings):
    app = create_app(replace(settings, publish_max_recipients=3))
    async with AsyncTestClient(app=app) as client:
        document = (await client.get("/schema/openapi.json")).json()
        campaign = await create_campaign(client)
        url = f"{CAMPAIGNS}/{campaign['id']}/publish"
        answers = {
            n: (await client.post(url, json={"recipients": recipients(n)}, headers=bearer()))
            for n in (0, 1, 3, 4)
        }

    items = component(document, "PublishRequest")["properties"]["recipients"]
    assert (items["minItems"], items["maxItems"]) == (1, 3)
    assert {n: r.status_code for n, r in answers.items()} == {0: 400, 1: 202, 3: 202, 4: 400}
    assert list(answers[4].json()["details"]) == ["$.recipients"]


async def test_lengths_enums_formats_and_required_fields_are_documented(client):
    document = (await client.get("/schema/openapi.json")).json()

    recipient = component(document, "Recipient")
    assert recipient["required"] == ["person_id", "recipient"]
    assert (
        recipient["properties"]["person_id"].items() >= {"minLength": 1, "maxLength": 256}.items()
    )
    assert (
        recipient["properties"]["recipient"].items() >= {"minLength": 1, "maxLength": 320}.items()
    )
    create = component(document, "CampaignCreate")
    assert set(create["required"]) == {"brand_id", "name", "channel", "body"}
    brand = create["properties"]["brand_id"]
    assert (brand["minLength"], brand["maxLength"]) == (1, 100) and brand["pattern"]
    assert create["properties"]["channel"]["enum"] == ["email", "sms"]
    for name in ("CampaignUpdate", "SuppressionPut"):  # unknown fields are refused
        assert component(document, name)["additionalProperties"] is False
    assert component(document, "Run")["properties"]["status"]["enum"] == [
        "scheduled",
        "queued",
        "running",
        "completed",
        "cancelled",
    ]
    for name, fields in {
        "Campaign": ["created_at", "updated_at"],
        "Run": ["created_at", "started_at", "completed_at", "scheduled_for"],
        "Delivery": ["sent_at", "not_before"],
        "Suppression": ["created_at"],
    }.items():
        for field in fields:
            schema = component(document, name)["properties"][field]
            formats = [s.get("format") for s in schema.get("oneOf", [schema])]
            assert "date-time" in formats, (name, field)

    listing = parameters(document, CAMPAIGNS, "get")
    assert (
        listing["limit"]["schema"].items()
        >= {"type": "integer", "minimum": 1, "maximum": 500}.items()
    )
    assert listing["status"]["schema"] == {
        "type": "string",
        "enum": ["draft", "active", "archived"],
    }
    assert listing["brand_id"]["schema"]["maxLength"] == 100
    runs = parameters(document, f"{CAMPAIGNS}/{{id}}/runs", "get")
    assert runs["status"]["schema"]["enum"] == [
        "scheduled",
        "queued",
        "running",
        "completed",
        "cancelled",
    ]
    send_at = component(document, "PublishRequest")["properties"]["send_at"]
    assert "date-time" in [s.get("format") for s in send_at.get("oneOf", [send_at])]
    quiet = component(document, "QuietHours")
    assert sorted(quiet["required"]) == ["end", "start", "time_zone"]
    assert quiet["properties"]["start"]["pattern"] and quiet["additionalProperties"] is False
    assert listing["cursor"]["schema"]["maxLength"] == 512
    path = parameters(document, "/v1/messaging/brands/{brand_id}/suppressions/{recipient}", "put")
    assert path["brand_id"]["schema"]["pattern"] == brand["pattern"]
    assert path["recipient"]["schema"]["pattern"]


async def test_the_headers_are_documented(client):
    document = (await client.get("/schema/openapi.json")).json()
    publish = document["paths"][f"{CAMPAIGNS}/{{id}}/publish"]["post"]

    key = parameters(document, f"{CAMPAIGNS}/{{id}}/publish", "post")["Idempotency-Key"]
    assert key["in"] == "header" and key["required"] is False
    assert key["schema"].items() >= {"type": "string", "minLength": 1, "maxLength": 512}.items()
    # The pattern bounds the key itself: 255 characters, bare or quoted (an escape is one).
    pattern = re.compile(key["schema"]["pattern"])
    assert pattern.match("k" * 255) and not pattern.match("k" * 256)
    assert pattern.match('"' + '\\"' * 255 + '"') and not pattern.match('"' + "k" * 256 + '"')
    assert not pattern.match('""')
    assert publish["responses"]["202"]["headers"]["Location"]["required"] is True
    assert "Retry-After" in publish["responses"]["409"]["headers"]
    assert "WWW-Authenticate" in publish["responses"]["401"]["headers"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                header = response.get("headers", {}).get("X-Request-ID")
                assert header and header["required"] is True, (method, path, status)
