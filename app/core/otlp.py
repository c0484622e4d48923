"""OTLP/HTTP export of app/core/lean_spans.py's spans: the SDK's exporter, with the protobuf
encoding written out by hand.

The SDK's encoder builds a protobuf object per span, attribute and value, and hashes the
resource for every span: 13-22 us a span (docs/performance.md, "Tracing"). This one writes
the wire format of opentelemetry/proto/trace/v1/trace.proto directly, with the resource
and scope encoded once: 3.5 us. Everything else is the SDK exporter's: OTEL_EXPORTER_OTLP_*
endpoint, headers, timeout, compression, certificates, and its retries.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import StatusCode
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from app.core.lean_spans import LeanSpan

_FIXED64 = struct.Struct("<Q")
_DOUBLE = struct.Struct("<d")
# Span.flags: "has is_remote" (0x100), and "is remote" (0x200) when the parent came from
# elsewhere; the field is a fixed32, number 16 (tag 0x85 0x01).
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", 0x100)
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", 0x300)


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: AttributeValue) -> bytes:
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)  # int64, two's complement
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    return _field(b"\x0a", str(value).encode())  # not an attribute type of the API


def key_values(tag: bytes, attributes: Mapping[str, AttributeValue]) -> bytes:
    """Repeated KeyValue, each under `tag`."""
    return b"".join(
        _field(tag, _field(b"\x0a", key.encode()) + _field(b"\x12", _any_value(value)))
        for key, value in attributes.items()
    )


def encode_span(span: LeanSpan) -> bytes:
    context = span.context
    parts = [
        b"\x0a\x10",
        context.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        parts.append(_field(b"\x1a", context.trace_state.to_header().encode()))
    if span.parent is not None:
        parts += (b"\x22\x08", span.parent.span_id.to_bytes(8, "big"))
    parts += (
        _field(b"\x2a", span.name.encode()),
        b"\x30",
        _varint(span.kind.value + 1),  # the API's INTERNAL is 0, OTLP's 1
        b"\x39",
        _FIXED64.pack(span.start_time),
        b"\x41",
        _FIXED64.pack(span.end_time or span.start_time),
        key_values(b"\x4a", span.attributes),
    )
    for name, timestamp, attributes in span.events:
        event = b"\x09" + _FIXED64.pack(timestamp) + _field(b"\x12", name.encode())
        parts.append(_field(b"\x5a", event + key_values(b"\x1a", attributes)))
    status = span.status
    if status.status_code is not StatusCode.UNSET:
        message = _field(b"\x12", status.description.encode()) if status.description else b""
        parts.append(_field(b"\x7a", message + b"\x18" + _varint(status.status_code.value)))
    remote = span.parent is not None and span.parent.is_remote
    parts.append(_FLAGS_REMOTE if remote else _FLAGS_LOCAL)
    return b"".join(parts)


def export_request(resource: Resource, scope: str, spans: Sequence[LeanSpan]) -> bytes:
    """An ExportTraceServiceRequest of `spans`, all of one resource and scope."""
    return _field(b"\x0a", _resource_spans(resource, scope, spans))


def _resource_spans(resource: Resource, scope: str, spans: Sequence[LeanSpan]) -> bytes:
    scope_spans = _field(b"\x0a", _field(b"\x0a", scope.encode())) + b"".join(
        _field(b"\x12", encode_span(span)) for span in spans
    )
    head = _field(b"\x0a", key_values(b"\x0a", resource.attributes))
    if resource.schema_url:
        return head + _field(b"\x12", scope_spans) + _field(b"\x1a", resource.schema_url.encode())
    return head + _field(b"\x12", scope_spans)


class LeanSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter, sending `export_request`'s encoding of the spans."""

    def __init__(self, resource: Resource, scope: str) -> None:
        super().__init__()
        self.resource, self.scope = resource, scope

    def export(self, spans: Sequence[LeanSpan]) -> SpanExportResult:  # type: ignore[override]
        if self._shutdown:
            return SpanExportResult.FAILURE
        # `_client` is the SDK exporter's transport (OTEL_EXPORTER_OTLP_* applied); its
        # `export` is what the SDK's own `export` calls after encoding. Pinned by uv.lock;
        # tests/app/test_tracing.py sends through it to a real receiver.
        result = self._client.export(export_request(self.resource, self.scope, spans))
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE
