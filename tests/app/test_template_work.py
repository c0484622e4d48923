"""A template's work is bounded, not only its output and its loop iterations: ranges,
`offset:`, `reversed`, filters that multiply text or numbers, and re-assigned variables
cannot keep a render (the worker's event loop, or a preview's) busy for minutes or fill
its memory. Each of these ran for hours or took gigabytes before they were bounded."""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

import httpx
import pytest

from app.domain.templates import (
    MAX_ARRAY_ELEMENTS,
    MAX_EMAIL_CHARACTERS,
    CampaignTemplates,
    RenderFailed,
)
from tests.helpers import CAMPAIGNS, create_campaign
from tests.tokens import bearer
from tests.waiting import collector_held_off
from tests.web import WebProcess, healthz_latencies

LONG_DATES = (
    "{% for i in (1..10000) %}{% assign d = data.x | append: i | date: '%Y' %}{% endfor %}",
    {"x": "2020" + " " * 4000},
)
"""dateutil's parser over a 4 KB text, a new one each step (its cache never helps): 10 s
uncounted; about a second of CPU to its bound now."""

HOSTILE = [
    # (template, data): each would run for hours, or take gigabytes, unbounded.
    (
        "{% for i in (1..data.n) offset: data.skip %}.{% endfor %}",
        {"n": 10**12, "skip": 10**12 - 9},
    ),
    ("{% for i in (1..data.n) reversed %}.{% break %}{% endfor %}", {"n": 10**9}),
    ("{{ (1..data.n) | join: '' | size }}", {"n": 10**11}),
    ("{{ (1..data.n) | sort | first }}", {"n": 10**11}),
    ("{% assign r = (1..data.n) %}{{ r | uniq | size }}", {"n": 10**11}),
    ("{{ data.s | split: '' | join: data.s | size }}", {"s": "a" * 3000}),
    ("{{ data.s | replace: 'a', data.s | replace: 'a', data.s | size }}", {"s": "a" * 3000}),
    (
        "{% assign a = data.s %}{% for i in (1..60) %}{% assign a = a | append: a %}{% endfor %}"
        "{{ a | size }}",
        {"s": "xxxxxxxx"},
    ),
    ("{{ data.s" + " | append: data.s" * 3000 + " | size }}", {"s": "x" * 3000}),
    (
        "{% assign n = data.n %}{% for i in (1..60) %}{% assign n = n | times: n %}{% endfor %}"
        "{{ n | modulo: 7 }}",
        {"n": 3},
    ),
    ("{{ data.n" + " | times: data.n" * 3000 + " | modulo: 7 }}", {"n": 10**300}),
    (
        "{% assign l = (1..data.n) | sort %}{% for i in (1..10000) %}{% assign t = l | sum %}"
        "{% endfor %}{{ t }}",
        {"n": 20000},
    ),
    (
        "{% assign s = data.s %}{% for i in (1..16) %}{% assign s = s | append: s %}{% endfor %}"
        "{% for i in (1..10000) %}{% assign t = s | replace: 'a', 'b' %}{% endfor %}{{ t | size }}",
        {"s": "aaaa"},
    ),
    LONG_DATES,
    (LONG_DATES[0], {"x": "2020-01-0"}),  # short dates, 10,000 times
    # python-liquid's `uniq` compares each element with those before it: 3.6 s for 20,000
    # distinct ones, and chained calls each pay it again.
    (
        "{% assign a = (1..data.n) | join: ',' | split: ',' %}{{ a | uniq | uniq | uniq | size }}",
        {"n": 20000},
    ),
    # Comparisons scan what they compare: 3-5 s for these loops, and an `and` of several
    # grows with the template's length.
    (
        "{% assign a = (1..data.n) | join: ',' | split: ',' %}"
        "{% for i in (1..10000) %}{% if a contains 'zz' %}y{% endif %}{% endfor %}",
        {"n": 20000},
    ),
    (
        "{% assign a = (1..data.n) | join: ',' | split: ',' %}{% assign b = a | reverse %}"
        "{% for i in (1..10000) %}{% if a == b and a == b and a == b %}y{% endif %}{% endfor %}",
        {"n": 20000},
    ),
]


def render(body: str, data: dict[str, object]) -> str:
    templates = CampaignTemplates.compile(None, body)
    rendered = templates.render(
        person_id="p", recipient="a@example.com", data=data, campaign_name="c"
    )
    return rendered.body


@pytest.mark.parametrize(
    ("body", "data"), HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))]
)
def test_a_render_that_would_work_without_bound_fails_in_milliseconds(body, data):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.thread_time()  # this thread only: not the database threads (conftest)

    with pytest.raises(RenderFailed, match="limit"):
        render(body, data)

    # CPU seconds of this thread. Most stop within milliseconds; `sum` over 20,000 elements
    # in a loop runs up to the filter work bound: 1.06 s measured at load 8 (the 1.0 s this
    # asserted before failed there). Without the bounds: minutes to hours.
    assert time.thread_time() - started < 3.0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200


def test_ranges_filters_and_assigns_within_the_bounds_still_work():
    assert render("{% for i in (1..data.n) offset: 2 %}{{ i }}{% endfor %}", {"n": 5}) == "345"
    assert render("{{ (1..10000) | join: '' | size }}", {}) == "38894"
    assert render(f"{{{{ (1..{MAX_ARRAY_ELEMENTS}) | size }}}}", {}) == str(MAX_ARRAY_ELEMENTS)
    assert render("{{ data.s | replace: 'a', 'bb' | size }}", {"s": "a" * 100_000}) == "200000"
    assert render("{{ data.n | times: data.n }}", {"n": 10**20}) == str(10**40)
    doubled = "{% assign a = 'x' %}{% for i in (1..17) %}{% assign a = a | append: a %}{% endfor %}"
    assert render(doubled + "{{ a | size }}", {}) == str(2**17)
    assert len(render("{{ data.s | append: data.s }}", {"s": "é" * (MAX_EMAIL_CHARACTERS // 2)}))
    assert render("{% if data.tags contains 'vip' %}y{% endif %}", {"tags": ["a", "vip"]}) == "y"
    ten_thousand = "{% for i in (1..10000) %}{% if i == data.n %}x{% endif %}{% endfor %}"
    assert render(ten_thousand, {"n": 5}) == "x"


def test_the_texts_of_a_message_share_one_budget_of_filter_work():
    """Subject, body and HTML body each within the bound, together three times it: the
    message fails, as one text of that work would (each had a budget of its own)."""
    dates = "{% for i in (1..40) %}{% assign d = data.x | append: i | date: '%Y' %}{% endfor %}"
    data = {"x": "2020" + " " * 4000}
    alone = CampaignTemplates.compile(None, dates + "ok")
    assert alone.render(person_id="p", recipient="a@b.c", data=data, campaign_name="c").body
    together = CampaignTemplates.compile(dates, dates, dates)
    started = time.thread_time()

    with pytest.raises(RenderFailed, match="filter work limit"):
        together.render(person_id="p", recipient="a@b.c", data=data, campaign_name="c")

    assert time.thread_time() - started < 3.0  # about 1 s of parsing dates, as one text


async def test_a_preview_of_a_template_that_would_work_for_hours_is_a_400_and_the_web_goes_on(
    web: WebProcess,
):
    async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
        campaign = await create_campaign(
            http, body="Hi {{ data.name }}{% for i in (1..data.n) offset: data.skip %}.{% endfor %}"
        )
        preview = await http.post(
            f"{CAMPAIGNS}/{campaign['id']}/preview",
            json={
                "person_id": "p1",
                "recipient": "a@example.com",
                "data": {"name": "Ana", "n": 10**12, "skip": 10**12 - 9},
            },
            headers=bearer(brands=["brand-a"]),
        )
        health = await http.get("/healthz")

    assert preview.status_code == 400, preview.text
    assert preview.json()["details"] == {"$.data": "body: range limit reached"}
    assert health.status_code == 200


async def preview_at_the_bound(http: httpx.AsyncClient, campaign: dict[str, Any]) -> httpx.Response:
    """A preview of LONG_DATES's template with its data: about a second of rendering."""
    return await http.post(
        f"{CAMPAIGNS}/{campaign['id']}/preview",
        json={"person_id": "p1", "recipient": "a@example.com", "data": LONG_DATES[1]},
        headers=bearer(brands=["brand-a"]),
    )


async def test_a_preview_at_the_bound_of_its_work_leaves_the_event_loop_free(web: WebProcess):
    """A render at its bounds takes 0.3-1 s of CPU (parsing dates); a preview runs it in a
    thread, so /healthz, asked every 10 ms meanwhile, is answered all along, not once the
    render ends."""
    async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
        campaign = await create_campaign(http, body=LONG_DATES[0] + "ok")
        started = time.perf_counter()
        preview = asyncio.create_task(preview_at_the_bound(http, campaign))
        latencies = await healthz_latencies(http, preview.done, "the preview's answer")
        refused = await preview
        preview_took = time.perf_counter() - started

    assert refused.status_code == 400, refused.text
    assert refused.json()["details"] == {"$.data": "body: filter work limit reached"}
    # Held by the render, /healthz would be answered before it begins and once it ends:
    # one answer would wait for the render, most of the preview's time (0.3-1 s), and there
    # would be two or three. Free, each takes milliseconds; a starved machine slows the
    # render as much as the probe.
    assert max(latencies) < preview_took / 2, (latencies, preview_took)
    assert len(latencies) >= 5, (latencies, preview_took)


async def test_previews_at_the_bound_of_their_work_hold_no_connection_while_they_render(
    web: WebProcess,
):
    """More previews at their bounds than the pool has connections (10): each gives its
    connection back before it renders, and waits its turn for a render, so an API call
    meanwhile gets a connection at once. Each held one before: the call waited for one
    (30 previews: the pool's 5 s, then a 503, as were 14 of the previews)."""
    async with httpx.AsyncClient(base_url=web.url, timeout=60) as http:
        campaign = await create_campaign(http, body=LONG_DATES[0] + "ok")
        previews = [asyncio.create_task(preview_at_the_bound(http, campaign)) for _ in range(12)]
        await asyncio.sleep(0.5)  # every preview under way or waiting its turn
        with collector_held_off():
            asked = time.perf_counter()
            listed = await http.get(CAMPAIGNS, headers=bearer(brands=["brand-a"]))
            list_took = time.perf_counter() - asked
        answers = await asyncio.gather(*previews)

    assert listed.status_code == 200, listed.text
    # Measured 0.07 s; 2.96 s when each preview held its connection (or 503 after 5 s).
    assert list_took < 1.5, list_took
    assert {answer.status_code for answer in answers} == {400}
