"""What this service's spans carry, as the SDK's stock OTLP/HTTP exporter sends them to a real
receiver: a caller's trace continued, attributes, and errors by type and code, never by
their words (docs/adr/0053)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.core import tracing
from jobs.providers.base import PermanentError
from tests.fakes.otlp import OtlpReceiver

CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    """Tracing on in this test, each span sent as it ends by the stock exporter to a real
    receiver. (Not through `tracing.install`: the process's global provider can be set
    once, and the other tests of this process run untraced.)"""
    with OtlpReceiver() as receiver:
        provider = TracerProvider()
        exporter = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        monkeypatch.setattr(tracing, "_tracer", provider.get_tracer(tracing.SCOPE), raising=False)
        monkeypatch.setattr(tracing, "_enabled", True)
        yield receiver
        provider.shutdown()


def received(receiver: OtlpReceiver) -> list[Span]:
    """The spans of every export, as the official protobuf classes decode them."""
    spans = []
    for body in receiver.bodies:
        for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
            for scope_spans in resource_spans.scope_spans:
                assert scope_spans.scope.name == "messaging"
                spans.extend(scope_spans.spans)
    return spans


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: getattr(pair.value, pair.value.WhichOneof("value")) for pair in pairs}


def test_spans_continue_the_callers_trace_and_an_error_shows_its_type_only(receiver):
    caller = TraceContextTextMapPropagator().extract(
        {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    )
    request_attributes = {"http.route": "/v1/x", "request_id": "r1"}
    address = "ann@example.com"
    with tracing.span(
        "POST /v1/x", kind=SpanKind.SERVER, attributes=request_attributes, parent=caller
    ) as request:
        request.set_attribute("http.response.status_code", 202)
        with pytest.raises(ValueError), tracing.db_span("COPY", "deliveries"):
            raise ValueError(f"refused {address}")

    copy, server = received(receiver)  # in the order they ended
    assert server.trace_id.hex() == copy.trace_id.hex() == CALLER_TRACE
    assert server.parent_span_id.hex() == CALLER_SPAN
    assert copy.parent_span_id == server.span_id
    assert (server.name, server.kind) == ("POST /v1/x", Span.SPAN_KIND_SERVER)
    assert (copy.name, copy.kind) == ("COPY deliveries", Span.SPAN_KIND_CLIENT)
    assert attributes(server.attributes) == {
        **request_attributes,
        "http.response.status_code": 202,
    }
    assert attributes(copy.attributes) == {
        "db.system.name": "postgresql",
        "db.operation.name": "COPY",
        "db.collection.name": "deliveries",
    }
    assert server.status.code == Status.STATUS_CODE_UNSET
    # The exception's type and where it was raised; never its message, which may quote
    # data (an address a provider refused).
    assert (copy.status.code, copy.status.message) == (Status.STATUS_CODE_ERROR, "ValueError")
    [event] = copy.events
    details = attributes(event.attributes)
    assert event.name == "exception"
    assert set(details) == {"exception.type", "exception.stacktrace"}
    assert details["exception.type"] == "ValueError"
    assert details["exception.stacktrace"].startswith("Traceback (most recent call last):")
    assert details["exception.stacktrace"].endswith("\nValueError\n")
    assert "test_spans_continue_the_callers_trace" in details["exception.stacktrace"]
    assert address.encode() not in b"".join(receiver.bodies)


def test_a_refusal_recorded_on_a_span_shows_its_type_and_code_never_its_words(receiver):
    """A provider's answer quotes the address it refused; the span of the send says
    which error and which code, and where it was raised, and nothing of the answer."""
    address = "patient@hiv-clinic.example"
    answer = f"550 5.1.1 <{address}>: no such user"

    def refuse() -> None:
        try:
            raise LookupError(answer)
        except LookupError as exc:
            raise PermanentError(f"SMTP {answer}", status_code=550) from exc

    with pytest.raises(PermanentError), tracing.send_span("smtp", "run:0", "email"):
        refuse()

    [send] = received(receiver)
    assert send.name == "send smtp"
    assert (send.status.code, send.status.message) == (
        Status.STATUS_CODE_ERROR,
        "PermanentError",
    )
    [event] = send.events
    details = attributes(event.attributes)
    assert details["exception.type"] == "jobs.providers.base.PermanentError"
    assert details["exception.status_code"] == 550
    stacktrace = details["exception.stacktrace"]
    assert "LookupError\n" in stacktrace and stacktrace.endswith("PermanentError\n")
    assert "refuse" in stacktrace  # the frames, both exceptions'
    exported = b"".join(receiver.bodies)
    assert address.encode() not in exported and b"no such user" not in exported
