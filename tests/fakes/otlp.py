"""An OpenTelemetry collector's OTLP/HTTP traces receiver."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.fakes.server import HOST, Handler, ThreadedServer


@dataclass
class ReceivedSpan:
    """One span as an OTLP receiver decodes it; ids in lower-case hex."""

    service: str
    name: str
    kind: str
    """SERVER, CLIENT, PRODUCER, CONSUMER or INTERNAL."""
    trace_id: str
    span_id: str
    parent_span_id: str
    """"" for a root span."""
    attributes: dict[str, Any]
    error: bool


class OtlpReceiver(ThreadedServer):
    """An OpenTelemetry collector's OTLP/HTTP traces endpoint (`POST /v1/traces`, protobuf):
    decodes every ExportTraceServiceRequest into `spans`. As a collector does, it keeps
    each exporter's connection for all its exports."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.bodies: list[bytes] = []
        """Every export request as it arrived (decompressed): all that left for the collector."""
        self.exports = 0
        super().__init__(_handler_for(self))
        self.endpoint = f"http://{HOST}:{self.port}"
        """The value of OTEL_EXPORTER_OTLP_ENDPOINT (the exporter appends /v1/traces)."""

    def named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in list(self.spans) if span.name == name]

    def receive(self, body: bytes) -> None:
        self.bodies.append(body)
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            error=span.status.code == Status.STATUS_CODE_ERROR,
                        )
                    )
        self.exports += 1


def _attributes(pairs: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        values[pair.key] = getattr(pair.value, kind) if kind else None
    return values


def _handler_for(receiver: OtlpReceiver) -> type[Handler]:
    class OtlpHandler(Handler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            receiver.receive(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")  # an empty ExportTraceServiceResponse
            self.end_headers()

    return OtlpHandler
