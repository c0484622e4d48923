"""OpenTelemetry traces of web and worker, exported over OTLP/HTTP when the standard OTEL_*
variables ask for them (`Settings.tracing`).

Off (the default), no SDK is imported or set up and `span()` hands out one shared
`nullcontext`: a span costs a function call. On, `configure_tracing` installs the SDK's
tracer provider with a batching OTLP exporter; the SDK itself reads the other variables
(OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS, OTEL_TRACES_SAMPLER, OTEL_BSP_...). Our
spans are recorded leanly (app/core/lean_spans.py) and encoded by hand (app/core/otlp.py): the SDK's
own spans and encoding cost a sampled publish 1.7 times the CPU of an untraced one.

A publish and the deliveries of its run share one trace: each deliver_batch job carries
the W3C `traceparent` of the span that deferred it (an optional job argument), and its
span continues that trace.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from app.core.lean_spans import NO_SPAN, LeanTracer
from app.core.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

logger = logging.getLogger(__name__)

SCOPE = "messaging"  # the instrumentation scope of every span
POSTGRESQL: Mapping[str, AttributeValue] = {"db.system.name": "postgresql"}

_enabled = False
_tracer: LeanTracer
_flush: Callable[[], object] | None = None
_NO_SPAN: AbstractContextManager[Any] = NO_SPAN
_W3C = TraceContextTextMapPropagator()


def configure_tracing(settings: Settings) -> None:
    """Set up the SDK and its OTLP/HTTP exporter if `settings.tracing`; else nothing."""
    if not settings.tracing or _enabled:
        return
    # Imported here: a process without tracing never loads the SDK.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from app.core.otlp import LeanSpanExporter

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "messaging"}))
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER
    processor = BatchSpanProcessor(LeanSpanExporter(resource, SCOPE))  # OTEL_BSP_*
    provider.add_span_processor(processor)
    install(provider, processor)
    logger.info(
        "tracing on: OTLP/HTTP export", extra={"service": resource.attributes[SERVICE_NAME]}
    )


def install(provider: SdkTracerProvider, processor: SpanProcessor) -> None:
    """Make `provider` the process's tracer provider, and the spans of this module real:
    recorded as app/core/lean_spans.py's, sampled by `provider`'s sampler, ended to `processor`
    (which `provider.force_flush` must flush)."""
    global _enabled, _flush, _tracer
    trace.set_tracer_provider(provider)
    _tracer = LeanTracer(provider.sampler, provider.id_generator, processor)
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
    return _tracer.start(name, kind, attributes, parent, record_errors=record_errors)


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
