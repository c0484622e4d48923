"""jobs/limits.py: the rates a worker takes from the database are ones it can live with."""

from __future__ import annotations

from dataclasses import replace

from tests.helpers import create_campaign, publish, recipients
from tests.jobs.delivery_helpers import assert_counters_equal_rows, deliver_until_ended


async def test_a_brand_cap_stored_before_the_bounds_existed_still_delivers(client, db, settings):
    """5e-324 messages a second was once accepted: the worker's bucket then failed every
    delivery of the brand (a numeric underflow). Such a cap is taken as the nearest bound,
    0.01 a second, whose burst still holds one message."""
    campaign = await create_campaign(client)
    await db.execute(
        "INSERT INTO brand_rate_limits (brand_id, email_per_second) VALUES ('brand-a', 5e-324)"
    )
    run = (await publish(client, campaign["id"], {"recipients": recipients(1)})).json()

    await deliver_until_ended(replace(settings, email_rate_limit=1e6), db, run["id"])

    assert await assert_counters_equal_rows(db, run["id"]) == {"sent": 1}
