"""Tracing off and on: the 1-recipient publish under load, and the cost of one span.

    python3 -m uv run --frozen python bench/tracing.py [--rounds 5] [--seconds 8] [--before DIR]

1. In this process, the cost of one `with span(...)` block (app/core/tracing.py): with tracing
   off (what web and worker run when no OTEL_* variable is set), beside an empty `with`
   (the floor), the API's no-op tracer (an unconditional `start_as_current_span` without
   SDK), the SDK's `start_as_current_span` recording a span for its batch processor, and
   this service's `span()` on the same SDK; the SDK's OTLP encoding of a span; then the
   tracing work of one publish (its request span, through app/http/tracing_middleware.py,
   and its seven spans) per sampler, beside tracing off.
2. The web process of bench/publish.py (uvicorn, as in the Procfile, database
   `messaging_bench`) started in turn with tracing off, on (every request sampled) and on
   with 10 % of the traces sampled; with --before, also the web process of older code,
   off, on and at 10 %. 1-recipient publishes from 8 wrk connections. Per round: p50, p99,
   throughput, and the web process's CPU time per publish (/proc, all its threads, the
   span exporter's included), then the medians. CPU per publish is the steadier figure on
   a shared machine: other sessions' load stretches latencies more than CPU time. The
   traces go to a local OTLP/HTTP receiver that decodes every export (tests/fakes/otlp.py),
   in this process, on the same 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import sys
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler, SamplingResult

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.publish import (  # noqa: E402
    BASE,
    DATABASE_URL,
    body,
    campaign,
    concurrent_small,
    prepare_database,
    start_web,
    timed_publish,
    token,
    wait_ready,
)
from tests.fakes.otlp import OtlpReceiver  # noqa: E402

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def span_costs() -> dict[str, float]:
    """Microseconds per `with` block of each kind."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
    )

    from app.core import tracing

    attributes = {"delivery_id": "run:1", "channel": "email"}
    noop = trace.NoOpTracer()
    provider = TracerProvider()
    provider.add_span_processor(batch(Drop()))
    sdk = provider.get_tracer("bench")
    empty = contextlib.nullcontext()

    def floor() -> None:
        with empty:
            pass

    def off() -> None:
        with tracing.span("send log", attributes=attributes):
            pass

    def api_noop() -> None:
        with noop.start_as_current_span("send log", attributes=attributes):
            pass

    def recorded() -> None:
        with sdk.start_as_current_span("send log", attributes=attributes):
            pass

    assert not tracing.enabled()
    n = 100_000
    costs = {}
    for name, block in [("floor", floor), ("off", off), ("api_noop", api_noop), ("sdk", recorded)]:
        costs[name] = (
            min(timeit.repeat(block, number=n, repeat=5, timer=time.process_time)) / n * 1e6
        )
    provider.shutdown()

    # What the exporter's thread does per span: OTLP protobuf encoding (then one POST per
    # batch of up to 512).
    kept = InMemorySpanExporter()
    keeper = TracerProvider()
    keeper.add_span_processor(SimpleSpanProcessor(kept))
    for _ in range(2048):
        with keeper.get_tracer("bench").start_as_current_span("send log", attributes=attributes):
            pass
    started = time.process_time()
    for first in range(0, 2048, 512):
        encode_spans(kept.get_finished_spans()[first : first + 512]).SerializeToString()
    costs["encode"] = (time.process_time() - started) / 2048 * 1e6
    return costs


def our_span_cost() -> float:
    """Microseconds per `with span(...)` block of app/core/tracing.py with tracing on, every
    span sampled and handed to the batch processor (whose exporter drops them)."""
    from app.core import tracing

    attributes = {"delivery_id": "run:1", "channel": "email"}

    def recorded() -> None:
        with tracing.span("send log", attributes=attributes):
            pass

    SAMPLER.delegate = ALWAYS_ON
    n = 100_000
    return min(timeit.repeat(recorded, number=n, repeat=5, timer=time.process_time)) / n * 1e6


def batch(exporter: SpanExporter) -> SpanProcessor:
    """The SDK's batch processor, with a queue that a timed loop does not overflow (a full
    queue drops spans, which would be cheaper than keeping them)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(exporter, max_queue_size=1_000_000)


class Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Switchable(Sampler):
    """The sampler of `install`'s provider: `delegate` decides."""

    delegate: Sampler = ALWAYS_ON

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return self.delegate.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "switchable"


SAMPLER = Switchable()


def install(processor: SpanProcessor) -> None:
    """Tracing on in this process, sampled by SAMPLER, spans ended to `processor`."""
    from app.core import tracing

    provider = TracerProvider(sampler=SAMPLER)
    provider.add_span_processor(processor)
    tracing.install(provider)


def publish_tracing_costs() -> dict[str, float]:
    """Microseconds of CPU per 1-recipient publish spent on tracing, in this process: the
    request span (app/http/tracing_middleware.py, around a stand-in ASGI app) and the spans of a
    publish with an Idempotency-Key (transaction, its five database calls, defer; seven),
    recorded by the SDK and handed to an exporter that
    drops them, per sampler; beside the same stand-in with tracing off. Turns tracing on
    in this process (web processes of part 2 are separate)."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
    from opentelemetry.trace import SpanKind

    from app.core import tracing
    from app.http.tracing_middleware import tracing_middleware

    async def publish(scope: Any, receive: Any, send: Any) -> None:
        with tracing.span("publish transaction", kind=SpanKind.CLIENT, attributes=DB):
            for operation, table in PUBLISH_CALLS:
                with tracing.db_span(operation, table):
                    pass
            with tracing.span("defer deliver_batch", kind=SpanKind.PRODUCER, attributes=DB):
                pass
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def nothing(message: Any = None) -> Any:
        return {}

    headers = [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer " + token().encode())]
    path = "/v1/messaging/campaigns/0/publish"

    def requests(app: Any, n: int = 20_000) -> float:
        async def run() -> float:
            started = time.process_time()
            for _ in range(n):
                scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
                await app({**scope, "path_template": path, "state": {}}, nothing, nothing)
            return (time.process_time() - started) / n * 1e6

        return min(asyncio.run(run()) for _ in range(3))

    costs = {"off": requests(publish)}
    install(batch(Drop()))
    traced = tracing_middleware(publish)
    for name, chosen in [
        ("none sampled", ALWAYS_OFF),
        ("10% sampled", ParentBased(TraceIdRatioBased(0.1))),
        ("all sampled", ALWAYS_ON),
    ]:
        SAMPLER.delegate = chosen
        costs[name] = requests(traced)
    return costs


DB = {"db.system.name": "postgresql", "db.operation.name": "COPY"}
PUBLISH_CALLS = [
    ("SELECT", "campaigns"),
    ("INSERT", "idempotency_keys"),
    ("SELECT", "suppressions"),
    ("INSERT", "runs"),
    ("COPY", "deliveries"),
]


def latency_ms(wrk_lines: str, percentile: str) -> float:
    match = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)\b", wrk_lines)
    assert match, wrk_lines
    return float(match.group(1)) * UNITS[match.group(2)]


def throughput(wrk_lines: str) -> float:
    match = re.search(r"Requests/sec:\s+([\d.]+)", wrk_lines)
    assert match, wrk_lines
    return float(match.group(1))


def figures(result: tuple[float, ...]) -> str:
    p50, p99, rate, cpu = result[:4]
    return f"p50 {p50:5.2f} ms  p99 {p99:6.2f} ms  {rate:6.0f}/s  web CPU {cpu:4.2f} ms/publish"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load_round(
    extra_env: dict[str, str], seconds: int, db: asyncpg.Connection, code: Path = ROOT
) -> tuple[float, float, float, float, int]:
    """p50, p99, throughput and web CPU ms per publish under wrk, and the number of
    publishes answered (warm-up included), of the web process of `code`."""
    web = start_web(extra_env=extra_env, code=code)
    headers = {"Authorization": f"Bearer {token()}", "Content-Type": "application/json"}
    try:
        async with httpx.AsyncClient(base_url=BASE, headers=headers, timeout=60) as client:
            await wait_ready(client)
            campaign_id = await campaign(client)
            url = f"/v1/messaging/campaigns/{campaign_id}/publish"
            for _ in range(50):  # warm up
                await timed_publish(client, url, body(1))
            before, cpu_before = await runs_of(db, campaign_id), cpu_seconds(web.pid)
            lines = concurrent_small(url, clients=8, seconds=seconds)
            cpu = cpu_seconds(web.pid) - cpu_before
            published = await runs_of(db, campaign_id)
    finally:
        web.terminate()
        web.wait()
    cpu_ms = cpu * 1000 / (published - before)
    return latency_ms(lines, "50%"), latency_ms(lines, "99%"), throughput(lines), cpu_ms, published


def publish_spans(receiver: OtlpReceiver) -> int:
    return sum(1 for span in list(receiver.spans) if span.name.endswith("/publish"))


async def runs_of(db: asyncpg.Connection, campaign_id: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM runs WHERE campaign_id = $1", campaign_id)
    return count


def in_process() -> None:
    costs = span_costs()
    per_publish = publish_tracing_costs()  # after the figures of tracing off: turns it on
    costs["ours"] = our_span_cost()  # tracing on since publish_tracing_costs
    print("one span block, CPU microseconds (best of 5 x 100,000):")
    for name, label in [
        ("floor", "empty `with` (floor)"),
        ("off", "span() with tracing off"),
        ("api_noop", "API no-op tracer (no SDK)"),
        ("sdk", "SDK, recorded (exporter drops)"),
        ("ours", "span() on the SDK, recorded"),
        ("encode", "SDK's OTLP encoding of its span"),
    ]:
        print(f"  {label:>32}: {costs[name]:6.2f} us")
    print("tracing work per publish (request span + 7 spans), CPU microseconds, in-process:")
    for name, value in per_publish.items():
        extra = value - per_publish["off"]
        print(f"  {name:>32}: {value:6.1f} us  (+{extra:5.1f} us over off)")
    encoding = 8 * costs["encode"]
    print(f"  {'+ OTLP encoding, when sampled':>32}: {encoding:6.1f} us (exporter thread)")


async def under_load(rounds: int, seconds: int, before: Path | None) -> None:
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        del os.environ[name]  # "off" means none of them
    await prepare_database(DATABASE_URL)
    modes: tuple[str, ...] = ("off", "on", "on 10%")
    if before:
        modes += ("before, off", "before, on", "before, 10%")
    results: dict[str, list[tuple[float, float, float, float, int]]] = {m: [] for m in modes}
    db = await asyncpg.connect(DATABASE_URL)
    traced = 0
    with OtlpReceiver() as receiver:
        on = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "bench"}
        sampled = {
            **on,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        }
        environments = {
            "off": {},
            "on": on,
            "on 10%": sampled,
            "before, off": {},
            "before, on": on,
            "before, 10%": sampled,
        }
        for _ in range(rounds):
            for mode in modes:
                code = before if before and mode.startswith("before") else ROOT
                spans = publish_spans(receiver)
                results[mode].append(await load_round(environments[mode], seconds, db, code))
                print(f"  round, tracing {mode:>11}: {figures(results[mode][-1])}")
                if mode == "on":
                    traced += publish_spans(receiver) - spans
    await db.close()
    requests_on = sum(r[4] for r in results["on"])
    print(f"1 recipient, 8 wrk connections, {seconds} s per round, median of {rounds} rounds:")
    medians = {
        mode: tuple(statistics.median(r[i] for r in results[mode]) for i in range(4))
        for mode in modes
    }
    for mode in modes:
        print(f"  tracing {mode:>11}: {figures(medians[mode])}")
    for mode, baseline in [
        ("on", "off"),
        ("on 10%", "off"),
        ("before, on", "before, off"),
        ("before, 10%", "before, off"),
        ("off", "before, off"),
        ("on", "before, on"),
        ("on 10%", "before, 10%"),
    ]:
        if baseline in medians:
            p50 = medians[mode][0] / medians[baseline][0]
            cpu = medians[mode][3] / medians[baseline][3]
            print(f"  {mode} / {baseline}: p50 {p50:4.2f}x, web CPU per publish {cpu:4.2f}x")
    print(f"  runs created with tracing on (all sampled): {requests_on}; their spans: {traced}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument(
        "--before",
        type=Path,
        help="a copy of older code (git archive <commit> | tar -x -C DIR): its web process "
        "joins each round, tracing off, on and at 10%%, as a baseline for a change",
    )
    args = parser.parse_args()
    in_process()
    asyncio.run(under_load(args.rounds, args.seconds, args.before))
