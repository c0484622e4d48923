"""Consent by topic, through the API: campaign topics and their warnings, topic-scoped
suppressions beside brand-wide ones, publish honouring them, the one-click unsubscribe link
(its token, its page, its POST) and the `suppression.created` event of every new
suppression. Delivery through real workers and providers: tests/jobs/test_consent.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import string
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.core.unsubscribe import TOKEN_DAYS, UnsubscribeKeys
from app.http.asgi import create_app
from db.events import brand_stream
from db.suppressions import NewSuppression, SuppressionRepository
from tests.helpers import CAMPAIGNS, publish, walk
from tests.jobs.delivery_helpers import deliveries
from tests.tokens import bearer

BRANDS = "/v1/messaging/brands/brand-a"
UNSUBSCRIBE = "/v1/messaging/unsubscribe"
SECRET = "provider-secret"
NOW = "2026-12-01T10:00:00Z"
ROOT = Path(__file__).resolve().parents[2]
ANN = {"person_id": "p1", "recipient": "ann@example.com"}


async def topic_campaign(
    client: Any,
    topic: str | None = "newsletter",
    *,
    body: str = "News. Unsubscribe: {{ unsubscribe_url }}",
    channel: str = "email",
    activate: bool = True,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "brand_id": "brand-a",
        "name": f"About {topic}",
        "channel": channel,
        "body": body,
        "topic": topic,
    }
    if channel == "email":
        payload["subject"] = "Our news"
    response = await client.post(CAMPAIGNS, json=payload, headers=bearer())
    assert response.status_code == 201, response.text
    campaign: dict[str, Any] = response.json()
    if activate:
        response = await client.post(f"{CAMPAIGNS}/{campaign['id']}/activate", headers=bearer())
        assert response.status_code == 200, response.text
        campaign = response.json()
    return campaign


def topic_url(address: str = "", topic: str = "newsletter") -> str:
    return f"{BRANDS}/topics/{topic}/suppressions/{address}".rstrip("/")


def keys_of(client: Any) -> UnsubscribeKeys:
    keys: UnsubscribeKeys = client.app.state.unsubscribe_keys
    return keys


def token_for(client: Any, address: str = "ann@example.com", topic: str = "newsletter") -> str:
    return keys_of(client).token(
        brand_id="brand-a", topic=topic, address=address, run_id=uuid.uuid4()
    )


async def suppression_events(db: Any) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT type, data FROM events WHERE stream = $1 ORDER BY seq", brand_stream("brand-a")
    )
    assert {row["type"] for row in rows} <= {"suppression.created"}
    return [row["data"] for row in rows]


# Campaign topics


async def test_a_campaign_takes_a_topic_at_create_and_by_patch_while_a_draft(client):
    created = await topic_campaign(client, "flu-2026_news", activate=False)
    patched = await client.patch(
        f"{CAMPAIGNS}/{created['id']}", json={"topic": "newsletter"}, headers=bearer()
    )
    cleared = await client.patch(
        f"{CAMPAIGNS}/{created['id']}", json={"topic": None}, headers=bearer()
    )
    active = await topic_campaign(client)
    frozen = await client.patch(
        f"{CAMPAIGNS}/{active['id']}", json={"topic": "other"}, headers=bearer()
    )

    assert created["topic"] == "flu-2026_news"
    assert patched.status_code == 200 and patched.json()["topic"] == "newsletter"
    assert cleared.status_code == 200 and cleared.json()["topic"] is None
    assert frozen.status_code == 412
    shown = await client.get(f"{CAMPAIGNS}/{active['id']}", headers=bearer())
    assert shown.json()["topic"] == "newsletter"


@pytest.mark.parametrize("topic", ["", "News", "a b", "x" * 65, "é", 7])
async def test_a_topic_outside_its_alphabet_is_400_naming_it(client, topic):
    body = {"brand_id": "brand-a", "name": "n", "channel": "sms", "body": "b", "topic": topic}

    response = await client.post(CAMPAIGNS, json=body, headers=bearer())

    assert response.status_code == 400
    assert list(response.json()["details"]) == ["$.topic"]


async def test_activation_warns_of_a_topic_email_without_an_unsubscribe_link_in_its_body(client):
    bare = await topic_campaign(client, body="News without a link.")
    linked = await topic_campaign(client, body="News. {{unsubscribe_url}}")
    sms = await topic_campaign(client, body="News by text.", channel="sms")
    service = await topic_campaign(client, None, body="Your appointment is tomorrow.")
    misplaced = await topic_campaign(client, None, body="Reminder. {{ unsubscribe_url }}")

    assert [w["code"] for w in bare["warnings"]] == ["no_unsubscribe_url"]
    assert bare["status"] == "active"  # allowed: a warning, not a refusal
    assert linked["warnings"] == sms["warnings"] == service["warnings"] == []
    assert [w["code"] for w in misplaced["warnings"]] == ["unsubscribe_url_without_topic"]
    shown = await client.get(f"{CAMPAIGNS}/{bare['id']}", headers=bearer())
    assert shown.json()["warnings"] == bare["warnings"]


# Topic-scoped suppressions


async def test_a_topic_suppression_is_its_own_beside_the_brand_wide_one(client, db):
    put = await client.put(
        topic_url("Ann@Example.com"), json={"reason": "manual"}, headers=bearer()
    )
    read = await client.get(topic_url("ann@example.com"), headers=bearer())
    other_topic = await client.get(topic_url("ann@example.com", "offers"), headers=bearer())
    brand_wide = await client.get(f"{BRANDS}/suppressions/ann@example.com", headers=bearer())

    assert put.status_code == 200, put.text
    assert put.json() == read.json()
    assert (put.json()["recipient"], put.json()["topic"], put.json()["reason"]) == (
        "ann@example.com",
        "newsletter",
        "manual",
    )
    assert other_topic.status_code == brand_wide.status_code == 404

    put_wide = await client.put(
        f"{BRANDS}/suppressions/ann@example.com", json={"reason": "bounced"}, headers=bearer()
    )
    deleted = await client.delete(topic_url("ann@example.com"), headers=bearer())
    again = await client.delete(topic_url("ann@example.com"), headers=bearer())

    assert put_wide.status_code == 200 and put_wide.json()["topic"] is None
    assert (deleted.status_code, again.status_code) == (204, 404)
    rows = await db.fetch("SELECT address, topic, reason FROM suppressions")
    assert [tuple(r) for r in rows] == [("ann@example.com", "", "bounced")]


async def test_the_listing_shows_topics_and_filters_by_one(client):
    for address, topic in [
        ("bob@example.com", None),
        ("ann@example.com", "offers"),
        ("ann@example.com", "newsletter"),
        ("ann@example.com", None),
        ("cy@example.com", "newsletter"),
    ]:
        url = topic_url(address, topic) if topic else f"{BRANDS}/suppressions/{address}"
        assert (
            await client.put(url, json={"reason": "manual"}, headers=bearer())
        ).status_code == 200

    every = await walk(client, f"{BRANDS}/suppressions", bearer(), limit=1)
    newsletter = await walk(client, f"{BRANDS}/suppressions", bearer(), topic="newsletter", limit=1)
    bad = await client.get(f"{BRANDS}/suppressions", params={"topic": "A"}, headers=bearer())

    assert [(s["recipient"], s["topic"]) for s in every] == [
        ("ann@example.com", None),
        ("ann@example.com", "newsletter"),
        ("ann@example.com", "offers"),
        ("bob@example.com", None),
        ("cy@example.com", "newsletter"),
    ]
    assert [s["recipient"] for s in newsletter] == ["ann@example.com", "cy@example.com"]
    assert bad.status_code == 400 and list(bad.json()["details"]) == ["query.topic"]


@pytest.mark.parametrize(
    ("method", "body", "scope"),
    [
        ("GET", None, "messaging:campaigns:read"),
        ("PUT", {"reason": "manual"}, "messaging:campaigns:write"),
        ("DELETE", None, "messaging:campaigns:write"),
    ],
)
async def test_topic_routes_need_a_token_their_scope_and_the_brand(client, method, body, scope):
    url = topic_url("ann@example.com")
    others = [s for s in ("messaging:campaigns:read", "messaging:campaigns:write") if s != scope]

    unauthenticated = await client.request(method, url, json=body)
    unscoped = await client.request(method, url, json=body, headers=bearer(scopes=others))
    foreign = await client.request(method, url, json=body, headers=bearer(brands=["brand-b"]))
    bad_topic = await client.request(
        method, topic_url("ann@example.com", "Bad"), json=body, headers=bearer()
    )

    assert (unauthenticated.status_code, unscoped.status_code, foreign.status_code) == (
        401,
        403,
        403,
    )
    assert bad_topic.status_code == 400 and "path.topic" in bad_topic.json()["details"]


async def test_publish_skips_the_suppressed_of_the_campaigns_topic_only(client, db):
    await client.put(topic_url("ann@example.com"), json={"reason": "manual"}, headers=bearer())
    await client.put(
        f"{BRANDS}/suppressions/bob@example.com", json={"reason": "bounced"}, headers=bearer()
    )
    people = {
        "recipients": [
            {"person_id": "p1", "recipient": "Ann@example.com"},
            {"person_id": "p2", "recipient": "bob@example.com"},
            {"person_id": "p3", "recipient": "cy@example.com"},
        ]
    }
    runs = {}
    for name, topic in [("newsletter", "newsletter"), ("offers", "offers"), ("service", None)]:
        campaign = await topic_campaign(client, topic)
        runs[name] = (await publish(client, campaign["id"], people)).json()

    def fates(rows: list[Any]) -> list[tuple[str, str | None]]:
        return [(row["status"], row["reason"]) for row in rows]

    assert fates(await deliveries(db, runs["newsletter"]["id"])) == [
        ("skipped", "suppressed"),
        ("skipped", "suppressed"),  # brand-wide stops everything
        ("pending", None),
    ]
    for other in ("offers", "service"):
        assert fates(await deliveries(db, runs[other]["id"])) == [
            ("pending", None),
            ("skipped", "suppressed"),
            ("pending", None),
        ]
    assert runs["newsletter"]["skipped_count"] == 2


# The unsubscribe link


async def test_the_token_shows_no_address_and_the_page_changes_nothing(client, db):
    token = token_for(client, "ann.patient@clinic.example")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))

    page = await client.get(f"{UNSUBSCRIBE}/{token}")
    twice = await client.get(f"{UNSUBSCRIBE}/{token}")

    assert b"ann" not in raw and b"clinic" not in raw and "ann" not in token
    assert page.status_code == twice.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "brand-a" in page.text and "newsletter" in page.text
    assert '<form method="post">' in page.text and "List-Unsubscribe" in page.text
    assert "ann.patient" not in page.text
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    assert await suppression_events(db) == []


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded"),
        (
            b'--b\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
            b"One-Click\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
        (b"", None),
    ],
)
async def test_one_click_suppresses_for_the_topic_once_whatever_the_body(
    client, db, content, content_type
):
    run_id = uuid.uuid4()
    token = keys_of(client).token(
        brand_id="brand-a", topic="newsletter", address="ann@example.com", run_id=run_id
    )
    headers = {"Content-Type": content_type} if content_type else {}

    first = await client.post(f"{UNSUBSCRIBE}/{token}", content=content, headers=headers)
    again = await client.post(f"{UNSUBSCRIBE}/{token}", content=content, headers=headers)

    assert first.status_code == again.status_code == 200, first.text
    assert "location" not in first.headers
    assert first.headers["content-type"].startswith("text/html")
    assert "no longer receive" in first.text and "newsletter" in first.text
    row = await db.fetchrow("SELECT * FROM suppressions")
    assert (row["address"], row["topic"], row["reason"], row["source"], row["run_id"]) == (
        "ann@example.com",
        "newsletter",
        "unsubscribed",
        "one_click",
        run_id,
    )
    assert await suppression_events(db) == [
        {
            "brand_id": "brand-a",
            "recipient": "ann@example.com",
            "topic": "newsletter",
            "reason": "unsubscribed",
            "source": "one_click",
        }
    ]


async def test_one_click_keeps_the_reason_of_a_suppression_already_there(client, db):
    await client.put(topic_url("ann@example.com"), json={"reason": "complained"}, headers=bearer())

    response = await client.post(f"{UNSUBSCRIBE}/{token_for(client)}")

    assert response.status_code == 200
    assert await db.fetchval("SELECT reason FROM suppressions") == "complained"
    assert [e["source"] for e in await suppression_events(db)] == ["api"]


def altered(token: str) -> list[str]:
    """The token with one character changed at its start, middle and end, and cut short."""
    changes = []
    for at in (0, 1, len(token) // 2, len(token) - 1):
        swap = "A" if token[at] != "A" else "B"
        changes.append(token[:at] + swap + token[at + 1 :])
    return [*changes, token[:-1], token + "A"]


def other_spellings(token: str) -> list[str]:
    """The token with its last character's unused low bits set otherwise: the same bytes
    to a lenient base64 decoder (a 115-character token's last one carries 2 unused bits)."""
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    unused = {2: 4, 3: 2}[len(token) % 4]  # bits of the last character past the data
    value = alphabet.index(token[-1])
    base = value & ~((1 << unused) - 1)
    return [token[:-1] + alphabet[base + low] for low in range(1 << unused) if base + low != value]


async def test_a_token_spelled_otherwise_is_a_404(client):
    """Found by CI: `altered` changed the last character of a token from A to B, which a
    lenient base64 decoder read as the same bytes, and the link opened."""
    tokens = [token_for(client, f"p{n}@example.com") for n in range(4)]
    assert {len(token) % 4 for token in tokens} <= {2, 3}
    for token in tokens:
        assert (await client.get(f"{UNSUBSCRIBE}/{token}")).status_code == 200
        for spelling in other_spellings(token):
            assert base64.urlsafe_b64decode(spelling + "==") == base64.urlsafe_b64decode(
                token + "=="
            )
            response = await client.get(f"{UNSUBSCRIBE}/{spelling}")
            assert response.status_code == 404, spelling


async def test_a_forged_or_altered_token_is_a_404_that_says_nothing(client, settings, db):
    forger = UnsubscribeKeys.of(replace(settings, unsubscribe_secrets="forger-key-0123456789"))
    assert forger is not None
    tokens = [
        *altered(token_for(client)),
        forger.token(brand_id="brand-a", topic="newsletter", address="a@b.co", run_id=uuid.uuid4()),
        base64.urlsafe_b64encode(b"\x01" + b"\x00" * 60).decode().rstrip("="),
        "not-a-token",
        "x" * 2000,
        "%FF",
    ]

    for token in tokens:
        for method in ("GET", "POST"):
            response = await client.request(method, f"{UNSUBSCRIBE}/{token}")
            assert response.status_code == 404, (method, token)
            assert response.json()["error"] == "not_found"
            assert token not in response.text
    browser = await client.post(f"{UNSUBSCRIBE}/not-a-token", headers={"Accept": "text/html"})
    assert browser.status_code == 404 and browser.headers["content-type"].startswith("text/html")
    assert "not valid" in browser.text
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_a_token_opens_for_two_years_then_is_a_404(client, db):
    keys = keys_of(client)
    made = time.time() - (TOKEN_DAYS - 1) * 86400
    old = keys.token(
        brand_id="brand-a",
        topic="newsletter",
        address="a@example.com",
        run_id=uuid.uuid4(),
        now=made,
    )
    expired = keys.token(
        brand_id="brand-a",
        topic="newsletter",
        address="b@example.com",
        run_id=uuid.uuid4(),
        now=made - 2 * 86400,
    )

    assert (await client.post(f"{UNSUBSCRIBE}/{old}")).status_code == 200
    assert (await client.post(f"{UNSUBSCRIBE}/{expired}")).status_code == 404
    assert await db.fetchval("SELECT array_agg(address) FROM suppressions") == ["a@example.com"]


async def test_a_token_of_a_rotated_out_key_opens_while_the_key_is_listed(settings, db):
    old_key, new_key = "old-unsubscribe-key-0123456789", "new-unsubscribe-key-0123456789"
    before = create_app(replace(settings, unsubscribe_secrets=old_key))
    rotated = create_app(replace(settings, unsubscribe_secrets=f"{new_key}, {old_key}"))
    retired = create_app(replace(settings, unsubscribe_secrets=new_key))
    async with AsyncTestClient(before) as client:
        old_token = token_for(client, "old@example.com")

    async with AsyncTestClient(rotated) as client:
        new_token = token_for(client, "new@example.com")
        assert (await client.get(f"{UNSUBSCRIBE}/{old_token}")).status_code == 200
        assert (await client.post(f"{UNSUBSCRIBE}/{old_token}")).status_code == 200
    async with AsyncTestClient(retired) as client:
        assert (await client.post(f"{UNSUBSCRIBE}/{new_token}")).status_code == 200
        assert (await client.post(f"{UNSUBSCRIBE}/{old_token}")).status_code == 404

    rows = await db.fetch("SELECT address FROM suppressions ORDER BY address")
    assert [r["address"] for r in rows] == ["new@example.com", "old@example.com"]


async def test_without_keys_every_link_is_a_404(settings):
    async with AsyncTestClient(create_app(replace(settings, unsubscribe_secrets=None))) as client:
        assert client.app.state.unsubscribe_keys is None
        response = await client.post(f"{UNSUBSCRIBE}/anything")
    assert response.status_code == 404


# suppression.created


async def test_every_new_suppression_is_one_event_whatever_its_source(settings, db):
    async with AsyncTestClient(create_app(replace(settings, webhook_secret=SECRET))) as client:
        wide = f"{BRANDS}/suppressions/ann@example.com"
        await client.put(wide, json={"reason": "manual"}, headers=bearer())
        # A new reason, a repeat: no new suppression.
        await client.put(wide, json={"reason": "complained"}, headers=bearer())
        await client.put(wide, json={"reason": "complained"}, headers=bearer())
        await client.put(topic_url("ann@example.com"), json={"reason": "manual"}, headers=bearer())
        await client.post(f"{UNSUBSCRIBE}/{token_for(client, 'bob@example.com')}")
        campaign = await topic_campaign(client, None)
        people = [{"person_id": "p", "recipient": "Cy@Example.com"}]
        run = (await publish(client, campaign["id"], {"recipients": people})).json()
        bounce = {"delivery_id": f"{run['id']}:0", "type": "bounced", "occurred_at": NOW}
        body = json.dumps({"events": [bounce]}).encode()
        for _ in range(2):  # a provider posting the same body twice
            response = await client.post(
                "/v1/messaging/providers/webhook/events", content=body, headers=signed(body)
            )
            assert response.status_code == 200, response.text

    events = await suppression_events(db)
    jobs = await db.fetch(
        "SELECT j.task_name, j.lock, j.args FROM events e"
        " JOIN procrastinate_jobs j ON j.id = e.job_id WHERE e.stream = $1",
        brand_stream("brand-a"),
    )

    assert [(e["recipient"], e["topic"], e["reason"], e["source"]) for e in events] == [
        ("ann@example.com", None, "manual", "api"),
        ("ann@example.com", "newsletter", "manual", "api"),
        ("bob@example.com", "newsletter", "unsubscribed", "one_click"),
        ("cy@example.com", None, "bounced", "provider:webhook"),
    ]
    assert {e["brand_id"] for e in events} == {"brand-a"}
    assert len(jobs) == 4 and {(j["task_name"], j["lock"]) for j in jobs} == {
        ("send_events", "events:brand:brand-a")
    }
    assert {j["args"]["stream"] for j in jobs} == {"brand:brand-a"}


async def test_a_suppression_that_rolls_back_leaves_no_event_and_no_job(db):
    jobs_before = await db.fetchval("SELECT count(*) FROM procrastinate_jobs")

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        async with db.transaction():
            entry = NewSuppression("brand-a", "ann@example.com", "manual")
            [row] = await SuppressionRepository(db).add([entry], "api", sub="ops")
            assert row["created"]
            raise Crash

    assert await suppression_events(db) == []
    assert await db.fetchval("SELECT count(*) FROM procrastinate_jobs") == jobs_before
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Signature": f"sha256={digest}"}


def ops_queries(section: str) -> list[str]:
    """The SQL of a section of docs/ops.md: its indented blocks that start with SELECT."""
    text = (ROOT / "docs" / "ops.md").read_text()
    body = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"((?:\n    [^\n]+)+)", body)
    return [
        "\n".join(line[4:] for line in block.strip("\n").splitlines())
        for block in blocks
        if block.strip().startswith("SELECT")
    ]


async def test_the_runbook_tells_who_unsubscribed_from_what(client, db):
    campaign = await topic_campaign(client)
    run = (await publish(client, campaign["id"], {"recipients": [ANN]})).json()
    token = keys_of(client).token(
        brand_id="brand-a",
        topic="newsletter",
        address="ann@example.com",
        run_id=uuid.UUID(run["id"]),
    )
    assert (await client.post(f"{UNSUBSCRIBE}/{token}")).status_code == 200
    await client.put(
        f"{BRANDS}/suppressions/bob@example.com", json={"reason": "manual"}, headers=bearer()
    )

    recent, per_day, per_campaign, one_address = ops_queries("8. Who unsubscribed")

    (row,) = await db.fetch(recent)
    assert (row["brand_id"], row["topic"], row["address"], row["campaign"]) == (
        "brand-a",
        "newsletter",
        "ann@example.com",
        "About newsletter",
    )
    assert [(r["topic"], r["unsubscribed"]) for r in await db.fetch(per_day)] == [("newsletter", 1)]
    assert [(r["name"], r["unsubscribed"]) for r in await db.fetch(per_campaign)] == [
        ("About newsletter", 1)
    ]
    asked = one_address.replace("'acme'", "'brand-a'").replace("Ann@Example.com", "bob@example.com")
    assert [(r["topic"], r["source"]) for r in await db.fetch(asked)] == [(None, "api")]
