"""The run, its deliveries and its jobs commit together or not at all.

Faults are injected in the real database with triggers, at the two moments that matter:
while the jobs are being deferred, and after they were deferred (at commit).
"""

from __future__ import annotations

import uuid

from tests.helpers import create_campaign, publish, recipients

FAIL = """
CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'injected fault'; END $$;
"""


async def counts(db) -> tuple[int, int, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM deliveries) AS d,"
        " (SELECT count(*) FROM procrastinate_jobs) AS jobs"
    )
    return row["runs"], row["d"], row["jobs"]


async def test_failure_while_deferring_leaves_no_run_and_no_deliveries(client, db):
    campaign = await create_campaign(client)
    await db.execute(FAIL)
    await db.execute(
        "CREATE TRIGGER fail_defer BEFORE INSERT ON procrastinate_jobs"
        " FOR EACH STATEMENT EXECUTE FUNCTION fail()"
    )

    response = await publish(client, campaign["id"], {"recipients": recipients(1200)})

    assert response.status_code == 500
    assert await counts(db) == (0, 0, 0)


async def test_failure_after_deferring_leaves_no_jobs(client, db):
    campaign = await create_campaign(client)
    await db.execute(FAIL)
    # A deferred constraint trigger fires at COMMIT, after every statement of publish.
    await db.execute(
        "CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON runs"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail()"
    )

    response = await publish(client, campaign["id"], {"recipients": recipients(1200)})

    assert response.status_code == 500
    assert await counts(db) == (0, 0, 0)


async def test_commit_leaves_run_its_deliveries_and_jobs_pointing_at_it(client, db):
    campaign = await create_campaign(client)

    first = (await publish(client, campaign["id"], {"recipients": recipients(1001)})).json()
    second = (await publish(client, campaign["id"], {"recipients": recipients(10)})).json()

    assert await counts(db) == (2, 1011, 4)
    for run, n, batches in ((first, 1001, 3), (second, 10, 1)):
        run_id = uuid.UUID(run["id"])
        assert await db.fetchval("SELECT count(*) FROM deliveries WHERE run_id = $1", run_id) == n
        jobs = await db.fetch(
            "SELECT args FROM procrastinate_jobs WHERE args->>'run_id' = $1 ORDER BY id", run["id"]
        )
        assert len(jobs) == batches
        covered = [p for j in jobs for p in range(j["args"]["first"], j["args"]["last"] + 1)]
        assert covered == list(range(n))


async def test_failed_publish_leaves_the_service_usable(client, db):
    campaign = await create_campaign(client)
    await db.execute("ALTER TABLE deliveries RENAME TO deliveries_moved")
    assert (await publish(client, campaign["id"], {"recipients": recipients(3)})).status_code == 500
    await db.execute("ALTER TABLE deliveries_moved RENAME TO deliveries")

    response = await publish(client, campaign["id"], {"recipients": recipients(3)})

    assert response.status_code == 202
    assert await counts(db) == (1, 3, 1)
