"""Personalised messages through the API: campaign texts checked as templates, recipients'
`data` bounded and checked at publish (`missing_data`), never shown back, fingerprinted by
Idempotency-Key, carried by a retry; and the preview of one recipient's message."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from app.core.settings import Settings
from app.http.asgi import create_app
from tests.helpers import CAMPAIGNS, create_campaign, publish, walk
from tests.tokens import bearer

SECRET = "hiv-positive-canary-4q8"
"""A value of `data` that must never come back."""
REMINDER = {
    "subject": "{{ data.first_name | default: 'Hello' }}, your appointment",
    "body": "Hi {{ data.first_name }}, {{ data.doctor }} sees you at {{ data.visit.time }}.",
    "html_body": "<p>Hi {{ data.first_name }}, {{ data.doctor }} at {{ data.visit.time }}</p>",
}
ANA = {"first_name": "Ana", "doctor": "Dr. Ruiz", "visit": {"time": "15:30"}}
DEEP: dict[str, Any] = {"a": {"a": json.loads("[" * 9 + json.dumps(SECRET) + "]" * 9)}}
"""Eleven objects and arrays: one more than a recipient's data may nest."""


def patient(n: int, data: Any = None) -> dict[str, Any]:
    person = {"person_id": f"p{n}", "recipient": f"user{n}@example.com"}
    return person if data is None else person | {"data": data}


def url(campaign: dict[str, Any], *parts: str) -> str:
    return "/".join([CAMPAIGNS, campaign["id"], *parts])


async def deliveries_of(client: Any, campaign: dict[str, Any], run_id: str) -> list[Any]:
    return await walk(client, url(campaign, "runs", run_id, "deliveries"), bearer())


# --- Campaign texts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "text", "line"),
    [
        ("body", "Hello\n{{ data.name ", 2),
        ("subject", "{% if data.vip %}VIP", 1),
        ("html_body", "<p>\n\n{{ first_name }}</p>", 3),
        ("body", "{{ data.name | shout }}", 1),
    ],
)
async def test_a_text_that_is_not_a_template_is_a_400_naming_the_field_and_line_at_create_and_patch(
    client, field, text, line
):
    body = {
        "brand_id": "brand-a",
        "name": "Reminder",
        "channel": "email",
        "subject": "s",
        "body": "b",
    }
    created = await client.post(CAMPAIGNS, json=body | {field: text}, headers=bearer())
    draft = await create_campaign(client, activate=False)
    patched = await client.patch(url(draft), json={field: text}, headers=bearer())

    for response in (created, patched):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "validation_error"
        [(path, problem)] = response.json()["details"].items()
        assert path == f"$.{field}"
        assert problem.startswith(f"line {line}: "), problem


async def test_an_email_campaign_shows_its_html_body_and_an_sms_campaign_has_none(client):
    email = await create_campaign(client, activate=False, **REMINDER)
    assert (email["html_body"], email["body"]) == (REMINDER["html_body"], REMINDER["body"])
    read = await client.get(url(email), headers=bearer())
    assert read.json()["html_body"] == REMINDER["html_body"]

    sms = {"brand_id": "brand-a", "name": "n", "channel": "sms", "body": "b", "html_body": "<p>"}
    refused = await client.post(CAMPAIGNS, json=sms, headers=bearer())
    to_sms = await client.patch(url(email), json={"channel": "sms"}, headers=bearer())
    for response in (refused, to_sms):
        assert response.status_code == 400, response.text
        assert response.json()["details"] == {"$.html_body": "e-mail campaigns only"}

    cleared = await client.patch(url(email), json={"html_body": None}, headers=bearer())
    assert cleared.status_code == 200 and cleared.json()["html_body"] is None


async def test_texts_of_the_first_release_still_publish_and_are_not_checked_for_data(client, db):
    campaign = await create_campaign(client, body="Hello {{person_id}} at {{recipient}}")
    response = await publish(client, campaign["id"], {"recipients": [patient(1)]})

    assert response.status_code == 202, response.text
    assert response.json()["skipped_count"] == 0


# --- Data at publish -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"note": SECRET + "x" * 4096}, "larger than 4096 bytes as JSON"),
        ([SECRET], "must be a JSON object"),
        (SECRET, "must be a JSON object"),
        (DEEP, "nested deeper than 10 levels"),
    ],
)
async def test_data_that_cannot_be_taken_is_a_400_naming_its_path_never_its_value(
    client, db, data, problem
):
    campaign = await create_campaign(client)
    people = [patient(0, {"first_name": "Ana"}), patient(1, data)]

    response = await publish(client, campaign["id"], {"recipients": people})

    assert response.status_code == 400, response.text
    assert response.json()["details"] == {"$.recipients[1].data": problem}
    assert SECRET not in response.text
    assert await db.fetchval("SELECT count(*) FROM runs") == 0


@pytest.mark.parametrize(
    "raw",
    [
        b'{"n": 1e400}',  # beyond a double: msgspec refuses it, as the worker would
        b'{"n": 1e999999}',  # beyond PostgreSQL's numeric
        b'{"note": "\\u0000"}',  # PostgreSQL cannot store NUL in jsonb
        b'{"\\u0000": 1}',
        b'{"note": "\\udc00"}',  # a lone surrogate
        b'{"note": "\xff"}',  # not UTF-8
    ],
)
async def test_json_that_postgresql_would_refuse_is_a_400_not_a_500(client, db, raw):
    campaign = await create_campaign(client)
    body = b'{"recipients": [{"person_id": "p1", "recipient": "a@example.com", "data": %s}]}'

    response = await client.post(
        url(campaign, "publish"),
        content=body % raw,
        headers=bearer() | {"Content-Type": "application/json"},
    )

    assert response.status_code == 400, response.text
    # Named at `$` where the decoder of the whole body finds it (a broken escape) or where
    # PostgreSQL refuses it (NUL), as for any text of a publish.
    [path] = response.json()["details"]
    assert path in ("$.recipients[0].data", "$"), response.json()
    assert await db.fetchval("SELECT count(*) FROM runs") == 0


async def test_escapes_exponents_and_unicode_that_postgresql_takes_are_stored_as_their_value(
    client, db
):
    campaign = await create_campaign(client)
    body = (
        b'{"recipients": [{"person_id": "p1", "recipient": "a@example.com",'
        b' "data": {"name": "Zo\\u00eb \\ud83d\\ude00", "n": 2.5e3, "city": "S\xc3\xa3o Paulo",'
        b' "big": 123456789012345678901234567890}}]}'
    )

    response = await client.post(
        url(campaign, "publish"),
        content=body,
        headers=bearer() | {"Content-Type": "application/json"},
    )

    assert response.status_code == 202, response.text
    stored = await db.fetchval("SELECT data FROM delivery_data")
    assert stored == {
        "name": "Zoë 😀",
        "n": 2500.0,
        "city": "São Paulo",
        "big": 123456789012345678901234567890,
    }


async def test_data_nested_ten_deep_is_taken_and_eleven_is_not(client, db):
    campaign = await create_campaign(client)
    ten = {"a": json.loads("[" * 8 + "{}" + "]" * 8)}  # 10 objects and arrays

    taken = await publish(client, campaign["id"], {"recipients": [patient(0, ten)]})
    refused = await publish(client, campaign["id"], {"recipients": [patient(0, {"b": ten})]})

    assert taken.status_code == 202, taken.text
    assert refused.json()["details"] == {"$.recipients[0].data": "nested deeper than 10 levels"}


async def test_the_data_limit_is_a_setting(settings, db):
    app = create_app(replace(settings, publish_max_data_bytes=64))
    async with AsyncTestClient(app=app) as client:
        campaign = await create_campaign(client)
        fits = {"note": "x" * 53}  # 64 bytes as JSON
        ok = await publish(client, campaign["id"], {"recipients": [patient(0, fits)]})
        over = await publish(
            client, campaign["id"], {"recipients": [patient(0, {"note": "x" * 54})]}
        )

    assert ok.status_code == 202, ok.text
    assert over.status_code == 400
    assert over.json()["details"] == {"$.recipients[0].data": "larger than 64 bytes as JSON"}


async def test_a_recipient_whose_data_lacks_a_required_variable_is_skipped_missing_data(client, db):
    campaign = await create_campaign(client, **REMINDER)
    people = [
        patient(0, ANA),
        patient(1, {"first_name": "Bo", "doctor": "Dr. Lee"}),  # no visit.time
        patient(2),  # no data at all
        patient(3, ANA | {"visit": "15:30"}),  # visit is not an object
        patient(4, {"doctor": "Dr. Lee", "visit": {"time": "9:00"}, "first_name": None}),
        patient(0, ANA),  # a duplicate stays a duplicate
    ]

    response = await publish(client, campaign["id"], {"recipients": people})

    assert response.status_code == 202, response.text
    run = response.json()
    assert (run["total_recipients"], run["skipped_count"]) == (6, 4)
    listed = await deliveries_of(client, campaign, run["id"])
    assert [(d["status"], d["reason"]) for d in listed] == [
        ("pending", None),
        ("skipped", "missing_data"),
        ("skipped", "missing_data"),
        ("skipped", "missing_data"),
        ("pending", None),  # present, if null: rendered as nothing
        ("skipped", "duplicate"),
    ]
    assert all("data" not in d for d in listed)
    # Only what will be sent keeps its data.
    stored = await db.fetch("SELECT position FROM delivery_data ORDER BY position")
    assert [row["position"] for row in stored] == [0, 4]
    assert await db.fetchval("SELECT with_data FROM runs")


async def test_a_run_whose_recipients_have_no_data_is_not_one_with_data(client, db):
    campaign = await create_campaign(client)
    people = [patient(0), patient(1, None) | {"data": None}]

    response = await publish(client, campaign["id"], {"recipients": people})

    assert response.status_code == 202, response.text
    assert await db.fetchval("SELECT with_data FROM runs") is False
    assert await db.fetchval("SELECT count(*) FROM delivery_data") == 0


async def test_the_idempotency_fingerprint_includes_data(client, db):
    campaign = await create_campaign(client)
    keyed = bearer() | {"Idempotency-Key": "reminders-1"}
    body = {"recipients": [patient(0, ANA)]}
    first = await client.post(url(campaign, "publish"), json=body, headers=keyed)
    again = await client.post(url(campaign, "publish"), json=body, headers=keyed)
    other = {"recipients": [patient(0, ANA | {"doctor": "Dr. Lee"})]}
    changed = await client.post(url(campaign, "publish"), json=other, headers=keyed)

    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert changed.status_code == 422, changed.text
    assert changed.json()["error"] == "idempotency_key_reused"
    assert await db.fetchval("SELECT count(*) FROM runs") == 1


def test_a_publish_of_100000_recipients_with_300_bytes_of_data_each_fits_the_default_limit():
    data = {"first_name": "Alexandra", "doctor": "Dr. Maria Fernanda Ruiz-Gomez"}
    data |= {"note": "x" * (300 - len(msgspec.json.encode(data | {"note": ""})))}
    assert len(msgspec.json.encode(data)) == 300
    body = msgspec.json.encode(
        {
            "recipients": [
                {"person_id": f"person-{i:08d}", "recipient": f"user{i}@example.com", "data": data}
                for i in range(100_000)
            ]
        }
    )

    assert 35_000_000 < len(body) < Settings().publish_max_body_bytes


# --- Retry ---------------------------------------------------------------------------------


async def test_a_retry_carries_each_recipients_original_data(client, db):
    campaign = await create_campaign(client, **REMINDER)
    bo = ANA | {"first_name": "Bo", "visit": {"time": "9:00"}}
    people = [patient(0, ANA), patient(1, bo), patient(2, ANA | {"first_name": "Cy"})]
    run = (await publish(client, campaign["id"], {"recipients": people})).json()
    await db.execute(
        "UPDATE deliveries SET status = CASE WHEN position = 1 THEN 'failed' ELSE 'sent' END"
    )
    await db.execute(
        "UPDATE runs SET status = 'completed', completed_at = now(), sent_count = 2,"
        " failed_count = 1"
    )

    response = await client.post(url(campaign, "runs", run["id"], "retry"), headers=bearer())

    assert response.status_code == 202, response.text
    again = uuid.UUID(response.json()["id"])
    assert response.json()["skipped_count"] == 0
    stored = await db.fetch(
        "SELECT d.person_id, dd.data FROM deliveries d JOIN delivery_data dd"
        " USING (run_id, position) WHERE run_id = $1",
        again,
    )
    assert [(row["person_id"], row["data"]) for row in stored] == [("p1", bo)]


# --- Preview -------------------------------------------------------------------------------

READ_ONLY = bearer(scopes=["messaging:campaigns:read"])


async def test_preview_renders_one_recipients_message_with_the_read_scope_even_for_a_draft(
    client, db
):
    campaign = await create_campaign(client, activate=False, **REMINDER)
    ana = {"person_id": "p1", "recipient": "ana@example.com", "data": ANA | {"doctor": "<Dr>"}}

    response = await client.post(url(campaign, "preview"), json=ana, headers=READ_ONLY)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "subject": "Ana, your appointment",
        "body": "Hi Ana, <Dr> sees you at 15:30.",
        "html_body": "<p>Hi Ana, &lt;Dr&gt; at 15:30</p>",
        "sms_segments": None,
    }
    assert await db.fetchval("SELECT count(*) FROM runs") == 0


@pytest.mark.parametrize(
    ("text", "segments"), [("a" * 160, 1), ("a" * 161, 2), ("ж" * 70, 1), ("ж" * 71, 2)]
)
async def test_preview_of_an_sms_counts_its_parts_as_carriers_do(client, text, segments):
    campaign = await create_campaign(client, channel="sms", body="{{ data.text }}")
    body = {"person_id": "p1", "recipient": "+15551234567", "data": {"text": text}}

    response = await client.post(url(campaign, "preview"), json=body, headers=READ_ONLY)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "subject": None,
        "body": text,
        "html_body": None,
        "sms_segments": segments,
    }


@pytest.mark.parametrize(
    ("body", "data", "details"),
    [
        (
            "Hi {{ data.first_name }} {{ data.visit.time }}",
            {"first_name": SECRET},
            {"$.data.visit.time": "missing: the templates read it without a default"},
        ),
        (
            "{{ data.by_key[data.key] }}",
            {"by_key": {}, "key": SECRET},
            {"$.data": "body: data.by_key[data.key] is undefined"},
        ),
        (
            "{% for i in (1..data.n) %}x{% endfor %}",
            {"n": 20_000},
            {"$.data": "body: loop iteration limit reached"},
        ),
        (
            "{{ data.n | divided_by: 0 }}",
            {"n": SECRET},
            {"$.data": "body: FilterArgumentError"},
        ),
        (
            "{{ data.note }}",
            {"note": SECRET * 80},
            {"$.data": "body: longer than 1600 characters"},
        ),
    ],
)
async def test_preview_names_the_missing_variable_or_the_failed_render_never_a_value(
    client, body, data, details
):
    campaign = await create_campaign(client, channel="sms", body=body)
    recipient = {"person_id": "p1", "recipient": "+15551234567", "data": data}

    response = await client.post(url(campaign, "preview"), json=recipient, headers=READ_ONLY)

    assert response.status_code == 400, response.text
    assert response.json()["details"] == details
    assert SECRET not in response.text


async def test_preview_of_another_brands_campaign_is_404_and_its_data_is_bounded(client):
    theirs = await create_campaign(client, brand="brand-b")
    ours = await create_campaign(client)
    recipient = {"person_id": "p1", "recipient": "a@example.com"}

    hidden = await client.post(url(theirs, "preview"), json=recipient, headers=READ_ONLY)
    too_big = await client.post(
        url(ours, "preview"), json=recipient | {"data": {"x": "y" * 5000}}, headers=READ_ONLY
    )

    assert hidden.status_code == 404
    assert too_big.status_code == 400
    assert too_big.json()["details"] == {"$.data": "larger than 4096 bytes as JSON"}
