"""The spans of this service, recorded leanly for the SDK's batch processor.

The SDK's own span costs 10-17 us to start and end, and leaves a dozen objects per span
for the garbage collector (attributes behind a lock, limits, a copy at the end); with 8
spans per publish and every request sampled, that was a third of the web process's CPU.
A `LeanSpan` is one slotted object that is its own context manager. It keeps what
app/core/otlp.py encodes: no span limits (our spans have a handful of attributes), no links.

Sampling is the SDK's, as configured by OTEL_TRACES_SAMPLER: it decides for a root span
and for a span whose parent came from elsewhere (a `traceparent`). A span started inside
a recording span of this process joins its trace and is sampled as that one was, which is
what every built-in sampler would decide (the parent-based ones by definition, the others
by trace id or always the same).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.sdk.trace.sampling import Sampler

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
NO_SPAN: AbstractContextManager[None] = nullcontext()
"""What `LeanTracer.start` gives inside a span that is not sampled (and app/core/tracing.py
when tracing is off): one shared context manager that does nothing."""


class LeanTracer:
    """Starts `LeanSpan`s: ids from `ids`, decisions from `sampler`, ended spans to
    `processor` (the SDK's BatchSpanProcessor, which hands them to app/core/otlp.py)."""

    def __init__(self, sampler: Sampler, ids: IdGenerator, processor: SpanProcessor) -> None:
        self.sampler, self.ids, self.processor = sampler, ids, processor

    def start(
        self,
        name: str,
        kind: SpanKind,
        attributes: Mapping[str, AttributeValue] | None,
        parent: Context | None = None,
        *,
        record_errors: bool = True,
    ) -> LeanSpan | CurrentSpan | AbstractContextManager[None]:
        """A span that becomes the current one inside its `with` block. `parent`: the
        context to continue (a caller's or a job's); by default the current one.
        `record_errors=False`: the caller records errors itself (see LeanSpan).

        Inside a current span that is not sampled: NO_SPAN. Its children would not be
        sampled either (the samplers are parent-based, and a ratio sampler decides by trace
        id), so none is made; the context still says "not sampled" to the jobs deferred."""
        parent_span = trace.get_current_span(parent)
        parent_context = parent_span.get_span_context()
        if parent is None and parent_context.is_valid and not parent_span.is_recording():
            return NO_SPAN
        if isinstance(parent_span, LeanSpan):  # this process's, recording: join its trace
            span_context = SpanContext(
                parent_context.trace_id,
                self.ids.generate_span_id(),
                False,
                _SAMPLED,
                parent_context.trace_state,
            )
            return LeanSpan(
                self, name, span_context, parent_context, kind, attributes, record_errors
            )
        trace_id = (
            parent_context.trace_id if parent_context.is_valid else self.ids.generate_trace_id()
        )
        decision = self.sampler.should_sample(parent, trace_id, name, kind, attributes)
        sampled: bool = decision.decision.is_sampled()  # type: ignore[no-untyped-call]
        span_context = SpanContext(
            trace_id,
            self.ids.generate_span_id(),
            False,
            _SAMPLED if sampled else TraceFlags(TraceFlags.DEFAULT),
            decision.trace_state,
        )
        if not sampled:
            # Not recorded; current all the same, so that its children are skipped and its
            # jobs' traceparent says "not sampled".
            return CurrentSpan(NonRecordingSpan(span_context))
        if decision.attributes:
            attributes = {**(attributes or {}), **decision.attributes}
        return LeanSpan(
            self,
            name,
            span_context,
            parent_context if parent_context.is_valid else None,
            kind,
            attributes,
            record_errors,
        )


class CurrentSpan:
    """Makes a span that records nothing the current one inside a `with` block."""

    __slots__ = ("_token", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def __enter__(self) -> trace.Span:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, *exc_info: object) -> None:
        otel_context.detach(self._token)


class LeanSpan(trace.Span):
    """A recording span; inside its `with` block, the current span. An exception leaving
    the block is recorded as an `exception` event and makes the span's status ERROR, as
    the SDK's `start_as_current_span` does; unless not `record_errors`."""

    __slots__ = (
        "_record_errors",
        "_token",
        "_tracer",
        "attributes",
        "context",
        "end_time",
        "events",
        "kind",
        "name",
        "parent",
        "start_time",
        "status",
    )

    def __init__(
        self,
        tracer: LeanTracer,
        name: str,
        span_context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Mapping[str, AttributeValue] | None,
        record_errors: bool = True,
    ) -> None:
        self._tracer = tracer
        self.name, self.context, self.parent, self.kind = name, span_context, parent, kind
        self.attributes: dict[str, AttributeValue] = dict(attributes) if attributes else {}
        self.events: list[tuple[str, int, dict[str, AttributeValue]]] = []
        self.status = Status(StatusCode.UNSET)
        self._record_errors = record_errors
        self.end_time: int | None = None
        self.start_time = time.time_ns()

    def __enter__(self) -> LeanSpan:
        self._token = otel_context.attach(trace.set_span_in_context(self))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and self._record_errors:
            self.record_exception(exc)
            self.set_status(StatusCode.ERROR, type(exc).__name__)  # never the message
        self.end()
        otel_context.detach(self._token)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is None:
            self.end_time = end_time or time.time_ns()
            self._tracer.processor.on_end(self)  # type: ignore[arg-type]

    def get_span_context(self) -> SpanContext:
        return self.context

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.attributes.update(attributes)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.attributes[key] = value

    def add_event(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        timestamp: int | None = None,
    ) -> None:
        self.events.append((name, timestamp or time.time_ns(), dict(attributes or {})))

    def update_name(self, name: str) -> None:
        self.name = name

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if isinstance(status, StatusCode):
            status = Status(status, description if status is StatusCode.ERROR else None)
        # The API's rules: OK is final, and UNSET changes nothing.
        if (
            self.status.status_code is not StatusCode.OK
            and status.status_code is not StatusCode.UNSET
        ):
            self.status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, AttributeValue] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """An `exception` event with the exception's type, where it was raised and, if it
        carries one, its `status_code` (a provider's SMTP or HTTP code): never its message.
        A message may quote data (a provider's refusal quotes the address it refused,
        asyncpg the argument it could not encode), and spans leave the service for a
        tracing backend. This is the one place where exceptions enter spans; their words
        stay in the delivery's `last_error` or the log line of the same request."""
        event: dict[str, AttributeValue] = {
            "exception.type": type(exception).__qualname__,
            "exception.stacktrace": stacktrace_without_messages(exception),
            "exception.escaped": escaped,
        }
        status_code = getattr(exception, "status_code", None)
        if type(status_code) is int:
            event["exception.status_code"] = status_code
        self.add_event("exception", {**event, **(attributes or {})}, timestamp)


def stacktrace_without_messages(exception: BaseException) -> str:
    """The traceback Python would print for `exception` and the exceptions it chains
    (causes first), each ending with its type where Python adds `: <message>`."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exception
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(traceback.format_tb(current.__traceback__))
        parts.append(f"Traceback (most recent call last):\n{frames}{type(current).__qualname__}\n")
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return "\nwhich led to\n\n".join(reversed(parts))
