"""A database error's DETAIL quotes the row the statement failed on ("Failing row contains
(brand-a, <address>, ...)"), and asyncpg puts it into the error's text: the log line of
the 500 it causes keeps the error and its constraint, never the row."""

from __future__ import annotations

import httpx

from tests.tokens import bearer
from tests.web import WebProcess

CANARY = "canary.patient.7731@clinic.example"


async def test_the_log_of_a_500_from_a_constraint_does_not_quote_the_failing_row(
    db, web: WebProcess
):
    # Stands for any constraint or trigger a write may break (a bug, a migration).
    await db.execute(
        "ALTER TABLE suppressions ADD CONSTRAINT no_api CHECK (source <> 'api') NOT VALID"
    )
    async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
        response = await http.put(
            f"/v1/messaging/brands/brand-a/suppressions/{CANARY}",
            json={"reason": "manual"},
            headers=bearer(brands=["brand-a"]),
        )

    assert response.status_code == 500
    assert CANARY not in response.text
    log = web.log()
    assert 'violates check constraint \\"no_api\\"' in log  # the error itself is there
    assert CANARY not in log
