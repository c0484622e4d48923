"""OpenTelemetry traces: web and worker processes, started as the Procfile starts them, export
to a real OTLP/HTTP receiver; one trace shows a run from the publish request to its last send."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.settings import Settings, SettingsError
from tests.fakes.otlp import OtlpReceiver, ReceivedSpan
from tests.fakes.server import free_port
from tests.fakes.webhook import Reply
from tests.helpers import CAMPAIGNS, create_campaign, publish
from tests.jobs.delivery_helpers import ENDED, run_status
from tests.tokens import TEST_SECRET, bearer
from tests.waiting import PATIENCE, killed, stopped
from tests.web import until_ready, web_command

ROOT = Path(__file__).resolve().parents[2]
FAILING = "down@example.com"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def environment(database_url: str, **variables: str) -> dict[str, str]:
    """The process environment without any OTEL_* variable of the test's own, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, "DATABASE_URL": database_url, "JWT_SECRET": TEST_SECRET, **variables}


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def only(spans: list[ReceivedSpan]) -> ReceivedSpan:
    assert len(spans) == 1, spans
    return spans[0]


async def test_one_trace_shows_a_run_from_the_publish_request_to_its_last_send(
    database_url, db, receiver, sink, tmp_path
):
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "messaging-test",
        # No periodic export during the test: the spans leave when each process stops.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    port = free_port()
    web = start(
        web_command(port),
        environment(database_url, DELIVERY_BATCH_SIZE="2", **otel),
        tmp_path / "web.log",
    )
    worker_env = environment(
        database_url,
        EMAIL_PROVIDER="webhook",
        WEBHOOK_URL=sink.url,
        WEBHOOK_SECRET="s",
        DELIVERY_MAX_ATTEMPTS="2",
        DELIVERY_RETRY_BASE_SECONDS="0.05",
        **otel,
    )
    worker: subprocess.Popen[bytes] | None = None
    sink.replies[FAILING] = Reply(status=503)  # transient: a follow-up job tries again
    # The caller is traced too: the request continues its trace.
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    try:
        base_url = f"http://127.0.0.1:{port}"
        await until_ready(base_url, tmp_path / "web.log")
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            campaign = await create_campaign(http)
            # The brand has a suppression, so publish checks its recipients: one more call.
            await db.execute(
                "INSERT INTO suppressions (brand_id, address, reason)"
                " VALUES ($1, 'gone@example.com', 'unsubscribed')",
                campaign["brand_id"],
            )
            response = await http.post(
                f"{CAMPAIGNS}/{campaign['id']}/publish",
                json={
                    "recipients": [
                        {"person_id": "p0", "recipient": "ann@example.com"},
                        {"person_id": "p1", "recipient": "bob@example.com"},
                        {"person_id": "p2", "recipient": FAILING},
                    ]
                },
                headers={
                    **bearer(),
                    "traceparent": f"00-{caller_trace}-{caller_span}-01",
                    "Idempotency-Key": "traced-1",
                },
            )
        assert response.status_code == 202, response.text
        run_id = response.json()["id"]

        worker = start([sys.executable, "-m", "jobs.worker"], worker_env, tmp_path / "worker.log")
        async with asyncio.timeout(30):
            while await run_status(db, run_id) not in ENDED:  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
        # Both flush their batched spans when they stop (SIGTERM, and a clean exit).
        await stopped(worker, "the worker's exit on SIGTERM", tmp_path / "worker.log")
        await stopped(web, "the web process's exit on SIGTERM", tmp_path / "web.log")
    finally:
        for process in (web, worker):
            if process is not None:
                await killed(process)

    request = only(
        [s for s in receiver.named(f"POST {publish_route(receiver)}") if s.kind == "SERVER"]
    )
    assert request.trace_id == caller_trace
    assert request.parent_span_id == caller_span
    assert request.attributes["http.response.status_code"] == 202
    assert request.service == "messaging-test"

    transaction = only(receiver.named("publish transaction"))
    copy = only(receiver.named("COPY deliveries"))
    defer = only(receiver.named("defer deliver_batch"))
    assert transaction.parent_span_id == request.span_id
    assert copy.parent_span_id == transaction.span_id
    assert defer.parent_span_id == transaction.span_id
    assert (copy.kind, defer.kind) == ("CLIENT", "PRODUCER")
    # Every database call of the publish, each a span inside its transaction (the run's
    # INSERT writes its audit row too).
    calls = [
        only(receiver.named(name))
        for name in (
            "SELECT campaigns",
            "INSERT idempotency_keys",
            "SELECT suppressions",
            "INSERT runs",
        )
    ]
    assert not receiver.named("INSERT audit_events")
    assert {(c.parent_span_id, c.kind) for c in calls} == {(transaction.span_id, "CLIENT")}
    assert {c.attributes["db.system.name"] for c in [*calls, copy]} == {"postgresql"}
    assert defer.attributes["run_id"] == run_id

    jobs = receiver.named("deliver_batch")
    first_jobs = [job for job in jobs if job.parent_span_id == defer.span_id]
    follow_ups = [job for job in jobs if job.parent_span_id != defer.span_id]
    assert len(first_jobs) == 2  # 3 recipients in jobs of 2
    # The transient failure's follow-up; on a loaded machine one more may come of a claim
    # that found a row still locked (what a claim skips is followed up: issue 21). Each
    # continues the trace of the job that deferred it.
    assert follow_ups
    assert {job.parent_span_id for job in follow_ups} <= {job.span_id for job in jobs}
    assert {job.service for job in jobs} == {"messaging-test"}
    assert {job.kind for job in jobs} == {"CONSUMER"}

    sends = receiver.named("send webhook")
    assert {send.parent_span_id for send in sends} <= {job.span_id for job in jobs}
    by_delivery = sorted((s.attributes["delivery_id"], s.error) for s in sends)
    assert by_delivery == [
        (f"{run_id}:0", False),
        (f"{run_id}:1", False),
        (f"{run_id}:2", True),  # the 503, then the follow-up's last attempt
        (f"{run_id}:2", True),
    ]
    # One trace, from the caller's request to the last send.
    assert {s.trace_id for s in [transaction, *calls, copy, defer, *jobs, *sends]} == {caller_trace}


def publish_route(receiver: OtlpReceiver) -> str:
    """The publish route's template, as the server spans name it (whatever the name of the
    campaign's path parameter)."""
    names = {s.name for s in receiver.spans if s.kind == "SERVER"}
    routes = [n.removeprefix("POST ") for n in names if n.endswith("/publish")]
    assert len(routes) == 1, names
    assert routes[0].startswith(f"{CAMPAIGNS}/{{")
    return routes[0]


@pytest.mark.parametrize(
    ("otel", "expected"),
    [
        ({}, ["False", "ProxyTracerProvider"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, ["True", "TracerProvider"]),
    ],
    ids=["off", "on"],
)
def test_the_sdk_is_set_up_only_when_the_otel_variables_ask(database_url, otel, expected):
    """Off: the web and worker entry points load no SDK; spans are a shared nullcontext."""
    probe = (
        "import sys\n"
        "from opentelemetry import trace\n"
        "from app.http.asgi import web\n"
        "import jobs.worker\n"
        "from app.core.settings import get_settings\n"
        "from app.core.tracing import configure_tracing\n"
        "web(); configure_tracing(get_settings())\n"
        "print('opentelemetry.sdk' in sys.modules, type(trace.get_tracer_provider()).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=environment(database_url, **otel),
        capture_output=True,
        text=True,
        check=True,
        timeout=PATIENCE,
    )
    assert result.stdout.split() == expected


def test_an_unsampled_request_makes_no_child_spans_and_its_jobs_stay_unsampled():
    """Children of a span that is not sampled are skipped (they would not be sampled
    either); the trace context still travels, marked unsampled, so the worker does not
    trace the run's jobs. In a process of its own: it sets the process's tracer provider."""
    probe = (
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import"
        " InMemorySpanExporter\n"
        "from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased\n"
        "from app.core import tracing\n"
        "exported = InMemorySpanExporter()\n"
        "provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))\n"
        "provider.add_span_processor(SimpleSpanProcessor(exported))\n"
        "tracing.install(provider)\n"
        "root = tracing.span('root')\n"
        "with root:\n"
        "    inner = tracing.db_span('SELECT', 'campaigns'), tracing.span('COPY')\n"
        "    args = tracing.job_trace_args()\n"
        "print(root is tracing._NO_SPAN, all(s is tracing._NO_SPAN for s in inner),"
        " int(args['traceparent'][-2:], 16) & 1, len(exported.get_finished_spans()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=PATIENCE,
    )
    # The root is an unsampled span, its children nothing, and the sampled flag
    # of the jobs' traceparent is 0.
    assert result.stdout.split() == ["False", "True", "0", "0"]


async def test_jobs_carry_no_trace_argument_when_tracing_is_off(client, db):
    campaign = await create_campaign(client)
    response = await publish(
        client, campaign["id"], {"recipients": [{"person_id": "p", "recipient": "a@example.com"}]}
    )
    assert response.status_code == 202

    args = await db.fetch("SELECT args FROM procrastinate_jobs WHERE task_name = 'deliver_batch'")
    assert [row["args"] for row in args] == [
        {"run_id": response.json()["id"], "first": 0, "last": 0}
    ]


@pytest.mark.parametrize(
    ("env", "tracing"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "messaging"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ],
)
def test_tracing_is_on_when_the_otel_variables_ask_for_an_export(env, tracing):
    assert Settings.from_env(env).tracing is tracing


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_an_export_this_service_cannot_make_refuses_to_start(env):
    with pytest.raises(SettingsError):
        Settings.from_env(env)
