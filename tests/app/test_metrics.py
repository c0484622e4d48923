"""GET /metrics: Prometheus text of the web process, the queue figures that one background
loop reads from the database (never a scrape), and the worker's delivery metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from app.http.asgi import create_app
from tests.fakes.server import free_port
from tests.helpers import CAMPAIGNS, create_campaign, database_unreachable, publish, recipients
from tests.jobs.delivery_helpers import deliver_until_ended
from tests.tokens import bearer
from tests.waiting import PATIENCE

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def client(settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The app with its queue figures read often, so that tests need not wait 5 s, and
    /metrics rendered at every scrape."""
    fresh = replace(settings, metrics_refresh_seconds=0.05, metrics_cache_seconds=0)
    async with AsyncTestClient(create_app(fresh)) as c:
        yield c


async def scrape(client: Any) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def scrape_until(client: Any, condition: Callable[[Samples], bool]) -> Samples:
    """Scrapes until one satisfies `condition` (the queue figures are a round behind)."""
    async with asyncio.timeout(PATIENCE):
        while not condition(samples := await scrape(client)):  # noqa: ASYNC110 - polls HTTP
            await asyncio.sleep(0.02)
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_requests_are_counted_by_route_template_without_a_token(client):
    campaign = await create_campaign(client)
    before = await scrape(client)

    await client.get(f"{CAMPAIGNS}/{campaign['id']}", headers=bearer())
    await client.get(f"{CAMPAIGNS}/{campaign['id']}", headers=bearer(brands=["brand-b"]))
    after = await scrape(client)

    route = "/v1/messaging/campaigns/{id}"
    ok = {"method": "GET", "route": route, "status": "200"}
    hidden = {**ok, "status": "404"}
    assert (
        value(after, "messaging_http_requests_total", **ok)
        - value(before, "messaging_http_requests_total", **ok)
        == 1
    )
    assert (
        value(after, "messaging_http_requests_total", **hidden)
        - value(before, "messaging_http_requests_total", **hidden)
        == 1
    )
    latency = {"method": "GET", "route": route}
    assert value(after, "messaging_http_request_duration_seconds_count", **latency) >= 2
    assert not any(campaign["id"] in str(labels) for _, labels in after)


async def test_publish_size_and_queue_depth(client, db):
    campaign = await create_campaign(client)
    before = await scrape(client)

    await publish(client, campaign["id"], {"recipients": recipients(1200)})
    after = await scrape_until(
        client, lambda s: value(s, "messaging_queue_jobs", queue="deliveries", status="todo") == 3
    )

    assert (
        value(after, "messaging_publish_recipients_count")
        - value(before, "messaging_publish_recipients_count")
        == 1
    )
    assert (
        value(after, "messaging_publish_recipients_sum")
        - value(before, "messaging_publish_recipients_sum")
        == 1200
    )
    # 1,200 recipients in jobs of DELIVERY_BATCH_SIZE (500): 3 jobs waiting.
    assert value(after, "messaging_queue_jobs", queue="deliveries", status="todo") == 3
    assert value(after, "messaging_queue_oldest_waiting_seconds", queue="deliveries") >= 0
    assert value(after, "messaging_queue_scrape_ok") == 1


async def test_scrape_without_the_database_answers_without_queue_figures(client, db):
    await scrape_until(client, lambda s: value(s, "messaging_queue_scrape_ok") == 1)

    async with database_unreachable(db):
        samples = await scrape_until(client, lambda s: value(s, "messaging_queue_scrape_ok") == 0)

    assert not any(name == "messaging_queue_jobs" for name, _ in samples)
    again = await scrape_until(client, lambda s: value(s, "messaging_queue_scrape_ok") == 1)
    assert value(again, "messaging_queue_jobs", queue="deliveries", status="todo") == 0


async def test_a_scrape_reads_no_table(settings, db):
    """Scrapes answer from the figures of the last round, whatever the queue's table is
    doing: here it stays locked for every scrape, which reading it would wait for (and
    then answer without the figures, messaging_queue_scrape_ok 0)."""
    # The first round only; every scrape rendered afresh.
    app = create_app(replace(settings, metrics_refresh_seconds=3600, metrics_cache_seconds=0))
    async with AsyncTestClient(app) as client:
        campaign = await create_campaign(client)
        await publish(client, campaign["id"], {"recipients": recipients(10)})
        await scrape_until(client, lambda s: value(s, "messaging_queue_scrape_ok") == 1)
        async with db.transaction():
            await db.execute("LOCK TABLE procrastinate_jobs IN ACCESS EXCLUSIVE MODE")
            scrapes = [await scrape(client) for _ in range(20)]

    assert {value(s, "messaging_queue_scrape_ok") for s in scrapes} == {1}


async def test_the_queue_figures_outlive_a_round_that_fails_and_log_its_traceback(
    client, db, caplog
):
    await scrape_until(client, lambda s: value(s, "messaging_queue_scrape_ok") == 1)
    definition = await db.fetchval("SELECT pg_get_viewdef('ops_queue_depth')")
    # A view whose figures are no numbers: the round fails in our code, not the database.
    await db.execute(
        "DROP VIEW ops_queue_depth;"
        " CREATE VIEW ops_queue_depth AS SELECT 'deliveries'::text AS queue_name,"
        " 'todo'::text AS status, 'many'::text AS jobs, interval '1 s' AS oldest_waiting_for"
    )
    async with asyncio.timeout(PATIENCE):
        while not any("queue metrics: round failed" in r.message for r in caplog.records):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    await db.execute(f"DROP VIEW ops_queue_depth; CREATE VIEW ops_queue_depth AS {definition}")
    campaign = await create_campaign(client)
    await publish(client, campaign["id"], {"recipients": recipients(3)})

    samples = await scrape_until(
        client, lambda s: value(s, "messaging_queue_jobs", queue="deliveries", status="todo") == 1
    )

    assert value(samples, "messaging_queue_scrape_ok") == 1
    [failed, *_] = [r for r in caplog.records if "queue metrics: round failed" in r.message]
    assert failed.levelno == logging.ERROR and failed.exc_info is not None
    assert failed.exc_info[0] is ValueError  # float("many"), with its traceback


async def test_worker_counts_deliveries_by_channel_provider_and_outcome(client, db, settings):
    campaign = await create_campaign(client)
    body = {"recipients": [*recipients(30), {"person_id": "x", "recipient": "nope"}]}
    run = (await publish(client, campaign["id"], body)).json()
    labels = {"channel": "email", "provider": "log"}
    before = await scrape(client)

    await deliver_until_ended(settings, db, run["id"])
    after = await scrape(client)

    def delta(name: str, **more: str) -> float:
        return value(after, name, **labels, **more) - value(before, name, **labels, **more)

    assert delta("messaging_deliveries_total", outcome="sent") == 30
    assert delta("messaging_deliveries_total", outcome="failed") == 0
    assert delta("messaging_provider_latency_seconds_count") == 30


async def test_scrapes_in_a_burst_are_rendered_once_a_second(settings):
    """Anyone may call /metrics on the API's port as often as they like: within
    METRICS_CACHE_SECONDS of a render, they get the same text."""
    async with AsyncTestClient(create_app(replace(settings, metrics_cache_seconds=3600))) as c:
        burst = [(await c.get("/metrics")).text for _ in range(5)]
        await c.get("/healthz")
        later = (await c.get("/metrics")).text

    # The same text, though every scrape and the /healthz since were counted meanwhile.
    assert len(set(burst)) == 1 and later == burst[0]


async def test_with_metrics_port_metrics_leave_the_public_port(settings):
    """METRICS_PORT: /metrics is served there (for Prometheus, on the private network),
    and the port of the API answers 404 for it."""
    port = free_port()
    app = create_app(replace(settings, metrics_port=port, metrics_refresh_seconds=0.05))
    async with AsyncTestClient(app) as client, httpx.AsyncClient() as http:
        public = await client.get("/metrics")
        await client.get("/healthz")
        url = f"http://127.0.0.1:{port}/metrics"
        async with asyncio.timeout(PATIENCE):
            while "messaging_queue_scrape_ok 1.0" not in (private := await http.get(url)).text:  # noqa: ASYNC110 - polls HTTP
                await asyncio.sleep(0.02)

    assert public.status_code == 404 and public.json()["error"] == "not_found"
    assert private.status_code == 200
    assert 'messaging_http_requests_total{method="GET",route="/healthz",status="200"}' in (
        private.text
    )
