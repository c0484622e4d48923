"""PUT /v1/messaging/brands/{brand_id}/rate-limit and EMAIL_RATE_LIMIT / SMS_RATE_LIMIT:
rates from 0.01 to 1,000,000 messages per second, nothing the worker cannot live with."""

from __future__ import annotations

import pytest

from app.core.settings import Settings, SettingsError
from tests.tokens import bearer

URL = "/v1/messaging/brands/brand-a/rate-limit"


@pytest.mark.parametrize(
    "rate",
    [
        "5e-324",  # the smallest float: the worker's bucket underflowed
        "1e-12",  # a wait of 10^12 s: beyond any datetime
        "0.0099",
        "0",
        "-0.0",
        "-1",
        "1000000.5",
        "1e308",
        "1e400",  # infinity, as a JSON number
        "NaN",
        "Infinity",
        '"1"',
        "true",
    ],
)
async def test_a_rate_outside_the_bounds_is_400_naming_it(client, db, rate):
    body = f'{{"email_per_second": {rate}, "sms_per_second": null}}'

    response = await client.put(
        URL, content=body, headers={**bearer(), "Content-Type": "application/json"}
    )

    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error", "message", "details"}
    assert list(response.json()["details"]) in (["$.email_per_second"], ["$"])
    assert await db.fetchval("SELECT count(*) FROM brand_rate_limits") == 0


@pytest.mark.parametrize("rate", [0.01, 1, 1_000_000])
async def test_the_bounds_themselves_are_accepted(client, rate):
    response = await client.put(
        URL, json={"email_per_second": rate, "sms_per_second": rate}, headers=bearer()
    )

    assert response.status_code == 200, response.text
    assert (await client.get(URL, headers=bearer())).json() == {
        "email_per_second": rate,
        "sms_per_second": rate,
    }


@pytest.mark.parametrize("value", ["5e-324", "0.001", "0", "1e7", "inf", "nan"])
@pytest.mark.parametrize("name", ["EMAIL_RATE_LIMIT", "SMS_RATE_LIMIT"])
def test_a_channel_limit_outside_the_bounds_stops_the_start(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
