"""GET /metrics: Prometheus text of the web process, the queue read from the database,
and the worker's delivery metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import CAMPAIGNS, create_campaign, database_unreachable, publish, recipients
from tests.jobs.delivery_helpers import deliver_until_ended
from tests.tokens import bearer


async def scrape(client: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


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
    after = await scrape(client)

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
    await scrape(client)

    async with database_unreachable(db):
        samples = await scrape(client)

    assert value(samples, "messaging_queue_scrape_ok") == 0
    assert not any(name == "messaging_queue_jobs" for name, _ in samples)


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
