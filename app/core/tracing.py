"""OpenTelemetry traces of web and worker, exported over OTLP/HTTP when the standard OTEL_*
variables ask for them (`Settings.tracing`).

Off (the default), no SDK is imported or set up and `span()` hands out one shared
`nullcontext`: a span costs a function call. On, `configure_tracing` installs the SDK's
tracer provider with its batch processor and stock OTLP/HTTP exporter; the SDK itself reads
the other variables (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS, OTEL_TRACES_SAMPLER,
OTEL_BSP_..., OTEL_SPAN_..._LIMIT).

A publish and the deliveries of its run share one trace: each deliver_batch job carries
the W3C `traceparent` of the span that deferred it (an optional job argument), and its
span continues that trace.

Exceptions enter spans only through `record_exception`, without their messages (ADR 0053):
spans are started with the SDK's own recording off.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from app.core.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

logger = logging.getLogger(__name__)

SCOPE = "messaging"  # the instrumentation scope of every span
POSTGRESQL: Mapping[str, AttributeValue] = {"db.system.name": "postgresql"}

_enabled = False
_tracer: trace.Tracer
_flush: Callable[[], object] | None = None
_NO_SPAN: AbstractContextManager[Any] = nullcontext()
_W3C = TraceContextTextMapPropagator()


def configure_tracing(settings: Settings) -> None:
    """Set up the SDK and its OTLP/HTTP exporter if `settings.tracing`; else nothing."""
    if not settings.tracing or _enabled:
        return
    # Imported here: a process without tracing never loads the SDK.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "messaging"}))
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER, OTEL_SPAN_*_LIMIT
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_BSP_*, OTLP_*
    install(provider)
    logger.info(
        "tracing on: OTLP/HTTP export", extra={"service": resource.attributes[SERVICE_NAME]}
    )


def install(provider: SdkTracerProvider) -> None:
    """Make `provider` the process's tracer provider, and the spans of this module its."""
    global _enabled, _flush, _tracer
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer(SCOPE)
    _flush = provider.force_flush
    _enabled = True


def enabled() -> bool:
    return _enabled


def flush_spans() -> None:
    """Send the spans still batched (at most OTEL_BSP_SCHEDULE_DELAY old), before the
    process stops: uvicorn ends by re-raising SIGTERM, which skips the SDK's atexit hook."""
    if _flush is not None:
        _flush()


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
    parent: Context | None = None,
    record_errors: bool = True,
) -> AbstractContextManager[Any]:
    """A span around a block, the current one inside it; nothing at all when tracing is off
    or the enclosing span is not sampled. `parent`: a context to continue instead of the
    current one. An exception leaving the block makes the span an error, unless not
    `record_errors` (the caller then says what is one)."""
    if not _enabled:  # off: one test, no call
        return _NO_SPAN
    if parent is None:
        current = trace.get_current_span()
        if not current.is_recording() and current.get_span_context().is_valid:
            # Inside a span that is not sampled: its children would not be either (the
            # built-in samplers follow the parent, or decide by trace id), so none is made.
            # The context still says "not sampled" to the jobs deferred inside.
            return _NO_SPAN
    started = _tracer.start_span(
        name,
        parent,
        kind,
        attributes,
        record_exception=False,  # ours below, without the message
        set_status_on_exception=False,
    )
    return _current(started, record_errors)


@contextmanager
def _current(started: trace.Span, record_errors: bool) -> Iterator[trace.Span]:
    with trace.use_span(
        started, end_on_exit=True, record_exception=False, set_status_on_exception=False
    ):
        try:
            yield started
        except Exception as exc:  # as the SDK: not CancelledError, GeneratorExit
            if record_errors and started.is_recording():
                record_exception(started, exc)
                started.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
            raise


def record_exception(recording: trace.Span, exception: BaseException) -> None:
    """An `exception` event with the exception's type, where it was raised and, if it
    carries one, its `status_code` (a provider's SMTP or HTTP code): never its message.
    A message may quote data (a provider's refusal quotes the address it refused, asyncpg
    the argument it could not encode), and spans leave the service for a tracing backend.
    This is the one place where exceptions enter spans; their words stay in the delivery's
    `last_error` or the log line of the same request."""
    kind = type(exception)
    module = kind.__module__
    event: dict[str, AttributeValue] = {
        "exception.type": kind.__qualname__
        if module == "builtins"
        else f"{module}.{kind.__qualname__}",
        "exception.stacktrace": stacktrace_without_messages(exception),
    }
    status_code = getattr(exception, "status_code", None)
    if type(status_code) is int:
        event["exception.status_code"] = status_code
    recording.add_event("exception", event)


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


def db_span(operation: str, table: str) -> AbstractContextManager[Any]:
    """A CLIENT span `<operation> <table>` around one database call."""
    if not _enabled:
        return _NO_SPAN
    attributes = {**POSTGRESQL, "db.operation.name": operation, "db.collection.name": table}
    return span(f"{operation} {table}", kind=SpanKind.CLIENT, attributes=attributes)


def send_span(provider: str, delivery_id: str, channel: str) -> AbstractContextManager[Any]:
    """The CLIENT span of one provider send; its name and attributes are built only when
    tracing is on (a send at the `log` provider's rate pays for every instruction)."""
    if not _enabled:
        return _NO_SPAN
    attributes = {"delivery_id": delivery_id, "channel": channel}
    return span(f"send {provider}", kind=SpanKind.CLIENT, attributes=attributes)


@asynccontextmanager
async def transaction(conn: asyncpg.Connection, name: str) -> AsyncIterator[None]:
    """`conn.transaction()` in a span `name` that lasts from BEGIN to COMMIT or ROLLBACK."""
    with span(name, kind=SpanKind.CLIENT, attributes=POSTGRESQL):
        async with conn.transaction():
            yield


def job_trace_args() -> dict[str, str]:
    """The optional `traceparent` argument of a job deferred now: the current span's W3C
    trace context, so that the job's span continues this trace. Empty when off."""
    if not _enabled:
        return {}
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return {"traceparent": carrier["traceparent"]} if "traceparent" in carrier else {}


def job_span(
    name: str, traceparent: str | None, attributes: Mapping[str, AttributeValue]
) -> AbstractContextManager[Any]:
    """The span of a job's run, a child of the span that deferred it (`traceparent`)."""
    if not _enabled:
        return _NO_SPAN
    parent = _W3C.extract({"traceparent": traceparent}) if traceparent else None
    return span(name, kind=SpanKind.CONSUMER, attributes=attributes, parent=parent)
