"""The HTTP edge against hostile clients (issue 15), on the web process as the Procfile
starts it: header bombs, deeply nested JSON, unbounded and malformed parameters."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from app.domain.decoding import TOO_DEEP
from app.http.body import CAMPAIGN_BODY_BYTES, SMALL_BODY_BYTES
from tests.fakes.server import HOST
from tests.helpers import CAMPAIGNS
from tests.tokens import bearer
from tests.waiting import GONE, communicated, killed
from tests.web import WebProcess, healthz_latencies

BRANDS = "/v1/messaging/brands"
EVERY_BRAND = bearer(brands=["*"])
CAMPAIGN = {"brand_id": "brand-a", "name": "n", "channel": "email", "subject": "s", "body": "b"}


@pytest.fixture
async def http(web: WebProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=web.url, headers=EVERY_BRAND, timeout=30) as http:
        yield http


def assert_no_traceback(web: WebProcess) -> None:
    log = web.log()
    assert "Traceback" not in log and "internal_error" not in log, log[-3000:]


# Header bombs

BOMBER = """
import socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
bomb = b"a" * (64 << 20)  # one header value of 64 MiB
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    started = time.perf_counter()
    with socket.socket() as sock:
        # A small send buffer: the client tries to send all 64 MiB, but does not spend
        # this machine's CPU copying megabytes into the kernel that the server never reads.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.settimeout(60)
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nX-Bomb: ")
            sock.sendall(bomb)
            sock.sendall(b"\\r\\n\\r\\n")
            answer = sock.recv(64).split(b"\\r\\n")[0].decode()
        except (ConnectionResetError, BrokenPipeError):
            answer = "connection reset"
    print(f"{time.perf_counter() - started:.3f} {answer}", flush=True)
"""


async def test_header_bombs_are_refused_and_healthz_stays_fast_beside_them(web):
    port = urlsplit(web.url).port
    async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
        # The baseline, in the same run: this machine is shared, and its noise is not
        # what this test is about.
        quiet_until = time.monotonic() + 3
        quiet = await healthz_latencies(
            http, lambda: time.monotonic() > quiet_until, "the end of the 3 s baseline"
        )
        rss_before = web.peak_rss_mb()
        # 4 clients, each in its own process (so that they do not slow this one's probe),
        # sending one 64 MiB header after another for 3 s.
        bombers = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", BOMBER, str(port), "3", stdout=asyncio.subprocess.PIPE
            )
            for _ in range(4)
        ]
        try:
            bombed = await healthz_latencies(
                http,
                lambda: all(bomber.returncode is not None for bomber in bombers),
                "the bombers' exit after their 3 s",
            )
            outputs = [
                (await communicated(bomber, GONE, "a bomber's output"))[0] for bomber in bombers
            ]
        finally:
            for bomber in bombers:
                await killed(bomber)
    bombs = [
        (float(seconds), answer)
        for output in outputs
        for seconds, _, answer in (line.partition(" ") for line in output.decode().splitlines())
    ]

    p99, quiet_p99 = (statistics.quantiles(values, n=100)[98] for values in (bombed, quiet))
    # httptools reads every bomb whole: p99 7 s (bench/headers.py, docs/performance.md).
    # The bounded parser adds a few ms (p99 8 ms beside 4 bombers, target 50 ms). This
    # shared machine's noise once reached 80 ms at a load average of 5, and swings 2-3x:
    # 1 s above the same run's baseline is out of the noise's reach and still fails
    # httptools by seconds. The 50 ms target is the bench's to hold, not this test's.
    assert p99 < quiet_p99 + 1.0, f"/healthz p99 {p99 * 1000:.1f} ms, alone {quiet_p99 * 1000:.1f}"
    assert len(bombs) >= 4
    answers = {answer for _, answer in bombs}
    # Refused at the limit: the server closes with most of the 64 MiB unread, so the
    # client's send fails (reset) unless it reads the 431 first.
    assert answers <= {"HTTP/1.1 431 ", "connection reset"}, answers
    assert max(seconds for seconds, _ in bombs) < 5
    assert web.peak_rss_mb() - rss_before < 50


def raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_a_head_over_the_limit_is_431_with_the_error_body_even_when_sent_whole(web):
    port = urlsplit(web.url).port
    assert port is not None

    def head(header_bytes: int) -> bytes:
        value = b"a" * header_bytes
        return (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
            + value
            + b"\r\nConnection: close\r\n\r\n"
        )

    over = await asyncio.to_thread(raw_request, port, head(40 * 1024))
    under = await asyncio.to_thread(raw_request, port, head(24 * 1024))

    status_line, _, rest = over.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 431 ", over[:200]
    assert b"content-type: application/json" in rest.lower()
    body = httpx.Response(431, content=rest.partition(b"\r\n\r\n")[2]).json()
    assert body["error"] == "request_header_fields_too_large"
    assert set(body) == {"error", "message"}
    assert under.startswith(b"HTTP/1.1 200 ")


# Deep JSON


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


async def campaign(http: httpx.AsyncClient, *, activate: bool) -> str:
    campaign_id: str = (await http.post(CAMPAIGNS, json=CAMPAIGN)).json()["id"]
    if activate:
        assert (await http.post(f"{CAMPAIGNS}/{campaign_id}/activate")).status_code == 200
    return campaign_id


@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_deeply_nested_json_is_a_400_on_every_route_with_a_body(web, http, depth):
    draft, active = await campaign(http, activate=False), await campaign(http, activate=True)
    publish_limit = 32 * 1024 * 1024
    routes = [
        ("POST", CAMPAIGNS, CAMPAIGN, CAMPAIGN_BODY_BYTES),
        ("PATCH", f"{CAMPAIGNS}/{draft}", {"name": "m"}, CAMPAIGN_BODY_BYTES),
        ("POST", f"{CAMPAIGNS}/{active}/publish", {"recipients": []}, publish_limit),
        (
            "PUT",
            f"{BRANDS}/brand-a/suppressions/a@example.com",
            {"reason": "manual"},
            SMALL_BODY_BYTES,
        ),
        ("PUT", f"{BRANDS}/brand-a/rate-limit", RATE_LIMIT, SMALL_BODY_BYTES),
    ]
    for method, url, valid, limit in routes:
        whole = nested(depth)
        # Inside an unknown field, and inside a known one.
        in_unknown = "{" + f'"deep": {nested(depth)}, ' + json.dumps(valid)[1:]
        in_known = "{" + f'"{next(iter(valid))}": {nested(depth)}' + "}"
        for body in (whole, in_unknown, in_known):
            response = await http.request(
                method, url, content=body, headers={"Content-Type": "application/json"}
            )
            error = response.json()
            if len(body) > limit:  # refused before it is read to the end
                assert (response.status_code, error["error"]) == (413, "payload_too_large")
                continue
            assert response.status_code == 400, (method, url, response.text[:300])
            assert error["error"] == "validation_error"
            if body is in_unknown:  # skipped, recursively, until the recursion limit
                refused = {TOO_DEEP, "Object contains unknown field `deep`"}  # or forbidden
                assert error["details"]["$"] in refused, error
            else:  # the typed decoder stops at the first value of the wrong type
                assert "Expected" in next(iter(error["details"].values())), error
    assert_no_traceback(web)


async def test_crafted_bodies_are_told_apart_deep_from_not_json(web, http):
    """msgspec decides: what is not JSON says so, nesting past its recursion limit is
    "nested too deeply", and brackets inside strings are text."""
    active = await campaign(http, activate=True)
    url = f"{CAMPAIGNS}/{active}/publish"
    start = '{"recipients": [{"person_id": "p", "recipient": "a@example.com"}], "x": "]]]", '

    def levels(n: int) -> str:
        return "[" * n + "]" * n

    cases = {
        "]" * 1_000_000: "the request body is not valid JSON",
        "[" * 1_000_000: "the request body is not valid",  # an object was expected
        start + '"y": ' + levels(300) + "}": "",
        start + '"y": ' + levels(5_000) + "}": "the request body is nested too deeply",
        start + '"y": [[[}' * 3: "the request body is not valid JSON",
    }
    for body, message in cases.items():
        response = await http.post(url, content=body, headers={"Content-Type": "application/json"})
        if not message:  # 300 levels in an unknown field, brackets in a string: accepted
            assert response.status_code == 202, response.text[:300]
            continue
        assert response.status_code == 400, response.text[:300]
        assert response.json()["message"] == message, (body[:60], response.json())
    assert_no_traceback(web)


async def test_nesting_within_the_recursion_limit_is_decoded_and_beyond_it_is_a_400(web, http):
    active = await campaign(http, activate=True)
    url = f"{CAMPAIGNS}/{active}/publish"
    recipient = '{"person_id": "p", "recipient": "a@example.com"}'

    def body(depth: int) -> str:
        # The body object is level 1, `extra`'s arrays the levels below it.
        return '{"recipients": [' + recipient + '], "extra": ' + nested(depth - 1) + "}"

    within = await http.post(url, content=body(500))
    beyond = await http.post(url, content=body(2_000))
    # Brackets inside strings are text, not nesting.
    brackets_in_text = await http.post(
        url,
        content='{"recipients": [{"person_id": "'
        + "[" * 200
        + '", "recipient": "b@example.com"}]}',
    )

    assert within.status_code == 202, within.text
    assert beyond.status_code == 400
    assert beyond.json()["details"] == {"$": TOO_DEEP}
    assert brackets_in_text.status_code == 202, brackets_in_text.text


# Parameters


BAD_BRANDS = {  # what: (in a URL, in a JSON body or None)
    "101 characters": ("b" * 101, "b" * 101),
    "3,000 characters": ("b" * 3000, "b" * 3000),
    "invalid UTF-8 %FF": ("%FF", None),  # JSON text has no percent escapes
    "invalid UTF-8 %FE": ("%FE", None),
    "the literal *": ("*", "*"),
    "the literal * escaped": ("%2A", None),
    "a NUL": ("a%00b", "a\x00b"),
}


RATE_LIMIT = {"email_per_second": 5, "sms_per_second": None}


async def test_a_bad_brand_is_a_400_naming_it_on_every_brand_route_and_filter(web, http, db):
    for what, (brand, in_body) in BAD_BRANDS.items():
        suppression = f"{BRANDS}/{brand}/suppressions"
        requests = [
            ("GET", suppression, None, "path.brand_id"),
            ("GET", f"{suppression}/a@example.com", None, "path.brand_id"),
            ("PUT", f"{suppression}/a@example.com", {"reason": "manual"}, "path.brand_id"),
            ("DELETE", f"{suppression}/a@example.com", None, "path.brand_id"),
            ("GET", f"{CAMPAIGNS}?brand_id={brand}", None, "query.brand_id"),
            ("GET", f"{BRANDS}/{brand}/rate-limit", None, "path.brand_id"),
            ("PUT", f"{BRANDS}/{brand}/rate-limit", RATE_LIMIT, "path.brand_id"),
        ]
        for method, url, body, parameter in requests:
            response = await http.request(method, url, json=body)
            assert response.status_code == 400, (what, method, url[:80], response.text[:300])
            error = response.json()
            assert error["error"] == "validation_error"
            assert list(error["details"]) == [parameter], (what, method, error)
        if in_body is not None:
            response = await http.post(CAMPAIGNS, json={**CAMPAIGN, "brand_id": in_body})
            assert response.status_code == 400, (what, response.text[:300])
            assert list(response.json()["details"]) == ["$.brand_id"]

    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    assert await db.fetchval("SELECT count(*) FROM campaigns") == 0
    assert await db.fetchval("SELECT count(*) FROM brand_rate_limits") == 0
    assert_no_traceback(web)


async def test_a_brand_of_100_characters_is_one_brand_everywhere(http):
    brand = "é" * 100  # 100 characters, 200 bytes of UTF-8
    url = f"{BRANDS}/{brand}/suppressions/a@example.com"

    put = await http.put(url, json={"reason": "manual"})
    listed = await http.get(f"{BRANDS}/{brand}/suppressions")
    created = await http.post(CAMPAIGNS, json={**CAMPAIGN, "brand_id": brand})
    filtered = await http.get(CAMPAIGNS, params={"brand_id": brand})

    assert put.status_code == 200 and put.json()["brand_id"] == brand
    assert [s["recipient"] for s in listed.json()["items"]] == ["a@example.com"]
    assert created.status_code == 201
    assert [c["id"] for c in filtered.json()["items"]] == [created.json()["id"]]


async def test_a_recipient_in_a_path_follows_the_body_rules(web, http):
    suppression = f"{BRANDS}/brand-a/suppressions"
    bad = {
        "321 characters": "a" * 309 + "@example.com",
        "invalid UTF-8": "%FFa@example.com",
        "not an address": "nobody",
    }
    for what, recipient in bad.items():
        for method in ("GET", "PUT", "DELETE"):
            body = {"reason": "manual"} if method == "PUT" else None
            response = await http.request(method, f"{suppression}/{recipient}", json=body)
            assert response.status_code == 400, (what, method, response.text[:300])
            assert list(response.json()["details"]) == ["path.recipient"], (what, method)
    assert_no_traceback(web)


async def test_ids_limits_cursors_and_keys_are_bounded_and_named(web, http):
    active = await campaign(http, activate=True)
    publish = f"{CAMPAIGNS}/{active}/publish"
    body = {"recipients": [{"person_id": "p", "recipient": "a@example.com"}]}
    cases = [
        ("GET", f"{CAMPAIGNS}/{'a' * 37}", {}, "path.id"),
        ("GET", f"{CAMPAIGNS}/%FF", {}, "path.id"),
        ("GET", f"{CAMPAIGNS}/{active}/runs/{'a' * 3000}", {}, "path.run_id"),
        ("GET", f"{CAMPAIGNS}?limit=1e2", {}, "query.limit"),
        ("GET", f"{CAMPAIGNS}?limit=100.0", {}, "query.limit"),
        ("GET", f"{CAMPAIGNS}?limit=0", {}, "query.limit"),
        ("GET", f"{CAMPAIGNS}?cursor={'c' * 513}", {}, "query.cursor"),
        ("GET", f"{CAMPAIGNS}?status=%FF", {}, "query.status"),
        ("GET", f"{CAMPAIGNS}?status=gone", {}, "query.status"),
        ("GET", f"{CAMPAIGNS}?status=null", {}, "query.status"),
        ("GET", f"{CAMPAIGNS}?status=draft&status=draft", {}, "query.status"),
        ("GET", f"{CAMPAIGNS}?brand_id=null", {}, "query.brand_id"),
        ("GET", f"{CAMPAIGNS}?limit=5&limit=6", {}, "query.limit"),
        ("POST", publish, {"Idempotency-Key": "k" * 256}, "header.Idempotency-Key"),
        ("POST", publish, {"Idempotency-Key": "k" * 5000}, "header.Idempotency-Key"),
        ("POST", publish, {"Idempotency-Key": "two words"}, "header.Idempotency-Key"),
    ]
    for method, url, headers, parameter in cases:
        response = await http.request(method, url, headers=headers, json=body)
        assert response.status_code == 400, (url[:100], response.text[:300])
        assert list(response.json()["details"]) == [parameter], (url[:100], response.text)
    # A campaign id that is a UUID of no campaign, or no UUID at all, is just not found.
    for unknown in ("00000000-0000-0000-0000-000000000000", "abc"):
        assert (await http.get(f"{CAMPAIGNS}/{unknown}")).status_code == 404
    assert (await http.get(f"{CAMPAIGNS}?limit=100")).status_code == 200
    # Parameters a route does not declare are ignored, as before.
    assert (await http.get(f"{CAMPAIGNS}?limit=5&_=1&_=2&other=null")).status_code == 200
    assert_no_traceback(web)


async def test_metrics_content_type_names_its_charset_once(http):
    response = await http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].lower().count("charset") == 1
    assert response.headers["content-type"].startswith("text/plain; version=")


async def test_a_cursor_is_bound_to_the_brands_of_the_token_it_was_issued_to(web):
    async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
        for brand in ("pb1", "pb1", "pb2", "pb2"):
            headers = bearer(brands=[brand])
            response = await http.post(
                CAMPAIGNS, json={**CAMPAIGN, "brand_id": brand}, headers=headers
            )
            assert response.status_code == 201
        first = await http.get(CAMPAIGNS, params={"limit": 1}, headers=bearer(brands=["pb1"]))
        cursor = first.json()["next_cursor"]

        mine = await http.get(CAMPAIGNS, params={"cursor": cursor}, headers=bearer(brands=["pb1"]))
        theirs = await http.get(
            CAMPAIGNS, params={"cursor": cursor}, headers=bearer(brands=["pb2"])
        )
        everyone = await http.get(CAMPAIGNS, params={"cursor": cursor}, headers=EVERY_BRAND)

    assert mine.status_code == 200 and len(mine.json()["items"]) == 1
    for response in (theirs, everyone):
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_cursor"
