"""Numbers of a recipient's data too small for a double: PostgreSQL's jsonb refused
`1e-20000` (a 500), and took `1e-16383` as 16,000 digits of text, what the worker then
reads for each delivery. Refused like a number too large for a double: a 400 naming the
recipient's data; a double's own smallest, and text that merely looks like one, are taken."""

from __future__ import annotations

import pytest

from tests.helpers import CAMPAIGNS, create_campaign
from tests.tokens import bearer

BODY = b'{"recipients": [{"person_id": "p1", "recipient": "a@example.com", "data": %s}]}'


async def publish_raw(client, campaign, data: bytes):
    return await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/publish",
        content=BODY % data,
        headers=bearer() | {"Content-Type": "application/json"},
    )


@pytest.mark.parametrize(
    "data",
    [
        b'{"n": 1e-20000}',
        b'{"n": -1e-16383}',
        b'{"a": [0.5E-400]}',
        b'{"n": 1.5e-330}',
        b'{"n": 1e400}',  # too large: once told "nested deeper than 10 levels"
        b'{"a": [-1.8e308]}',
    ],
)
async def test_a_number_beyond_a_double_is_a_400_naming_the_data(client, db, data):
    campaign = await create_campaign(client)

    response = await publish_raw(client, campaign, data)

    assert response.status_code == 400, response.text
    assert response.json()["details"] == {
        "$.recipients[0].data": "not storable: a number beyond a double, or not UTF-8"
    }
    assert await db.fetchval("SELECT count(*) FROM runs") == 0


async def test_the_smallest_double_zero_and_text_like_an_exponent_are_taken(client, db):
    campaign = await create_campaign(client)
    data = b'{"n": 5e-324, "z": 0e-999, "m": -0.0, "note": "1e-20000 re-e-mail"}'

    response = await publish_raw(client, campaign, data)

    assert response.status_code == 202, response.text
    assert await db.fetchval("SELECT data FROM delivery_data") == {
        "n": 5e-324,
        "z": 0.0,
        "m": 0.0,
        "note": "1e-20000 re-e-mail",
    }
