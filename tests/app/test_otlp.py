"""app/core/otlp.py writes OTLP's protobuf by hand: what it writes must read back, with the
official generated classes, as the spans that were recorded (app/core/lean_spans.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.core.lean_spans import LeanSpan, LeanTracer
from app.core.otlp import export_request
from jobs.providers.base import PermanentError

CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind)


def test_spans_read_back_as_recorded():
    kept = InMemorySpanExporter()
    tracer = LeanTracer(ALWAYS_ON, RandomIdGenerator(), SimpleSpanProcessor(kept))
    caller = TraceContextTextMapPropagator().extract(
        {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=1"}
    )
    attributes = {
        "text": "é and ✓",
        "flag": True,
        "negative": -5,
        "large": 2**40,
        "ratio": 1.5,
        "names": ["a", "b"],
        "numbers": [1, 2],
    }
    with tracer.start("POST /publish", SpanKind.SERVER, attributes, caller) as request:
        request.set_attribute("http.response.status_code", 202)
        with pytest.raises(ValueError), tracer.start("COPY deliveries", SpanKind.CLIENT, None):
            raise ValueError("boom")
    resource = Resource({"service.name": "messaging-test", "deployment": "ci"})

    spans: Sequence[Any] = kept.get_finished_spans()  # ours, not the SDK's ReadableSpans
    encoded = export_request(resource, "messaging", spans)

    request_spans = ExportTraceServiceRequest.FromString(encoded).resource_spans
    assert len(request_spans) == 1
    assert {a.key: value(a.value) for a in request_spans[0].resource.attributes} == {
        "service.name": "messaging-test",
        "deployment": "ci",
    }
    [scope_spans] = request_spans[0].scope_spans
    assert scope_spans.scope.name == "messaging"
    copy, server = scope_spans.spans  # in the order they ended
    recorded_server = spans[1]
    assert isinstance(recorded_server, LeanSpan)

    assert server.trace_id.hex() == copy.trace_id.hex() == CALLER_TRACE
    assert server.parent_span_id.hex() == CALLER_SPAN
    assert server.span_id == recorded_server.context.span_id.to_bytes(8, "big")
    assert copy.parent_span_id == server.span_id
    assert server.trace_state == copy.trace_state == "vendor=1"
    assert (server.name, server.kind) == ("POST /publish", Span.SPAN_KIND_SERVER)
    assert (copy.name, copy.kind) == ("COPY deliveries", Span.SPAN_KIND_CLIENT)
    assert server.start_time_unix_nano == recorded_server.start_time
    assert server.end_time_unix_nano == recorded_server.end_time
    assert server.start_time_unix_nano <= copy.start_time_unix_nano
    assert copy.end_time_unix_nano <= server.end_time_unix_nano
    assert {a.key: value(a.value) for a in server.attributes} == {
        **attributes,
        "http.response.status_code": 202,
    }
    # Flags: whether the parent came from elsewhere (0x200), known for both (0x100).
    assert (server.flags, copy.flags) == (0x300, 0x100)

    assert server.status.code == Status.STATUS_CODE_UNSET
    # The exception's type and where it was raised; never its message, which may quote
    # data (an address a provider refused).
    assert (copy.status.code, copy.status.message) == (Status.STATUS_CODE_ERROR, "ValueError")
    [event] = copy.events
    details = {a.key: value(a.value) for a in event.attributes}
    assert event.name == "exception"
    assert details["exception.type"] == "ValueError" and "exception.message" not in details
    assert details["exception.stacktrace"].startswith("Traceback (most recent call last):")
    assert details["exception.stacktrace"].endswith("\nValueError\n")
    assert "test_spans_read_back_as_recorded" in details["exception.stacktrace"]


def test_a_refusal_recorded_on_a_span_shows_its_type_and_code_never_its_words():
    """A provider's answer quotes the address it refused; the span of the send says
    which error and which code, and where it was raised, and nothing of the answer."""
    kept = InMemorySpanExporter()
    tracer = LeanTracer(ALWAYS_ON, RandomIdGenerator(), SimpleSpanProcessor(kept))
    address = "patient@hiv-clinic.example"
    answer = f"550 5.1.1 <{address}>: no such user"

    def refuse() -> None:
        try:
            raise LookupError(answer)
        except LookupError as exc:
            raise PermanentError(f"SMTP {answer}", status_code=550) from exc

    with pytest.raises(PermanentError), tracer.start("send smtp", SpanKind.CLIENT, None):
        refuse()

    [span] = kept.get_finished_spans()
    [(name, _, details)] = span.events  # type: ignore[attr-defined]
    assert name == "exception"
    assert details["exception.type"] == "PermanentError"
    assert details["exception.status_code"] == 550
    assert span.status.description == "PermanentError"
    stacktrace = details["exception.stacktrace"]
    assert "LookupError\n" in stacktrace and stacktrace.endswith("PermanentError\n")
    assert "refuse" in stacktrace  # the frames, both exceptions'
    assert address not in repr(span.events) and "no such user" not in repr(span.events)
