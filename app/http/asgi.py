"""The web process: `create_app()` builds the Litestar app from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components

from app.core import tracing
from app.core.logs import configure_logging
from app.core.settings import DEV_JWT_SECRET, Settings, SettingsError, get_settings
from app.core.tracing import configure_tracing
from app.core.unsubscribe import UnsubscribeKeys
from app.http.auth import build_jwt_auth
from app.http.dependencies import provide_connection
from app.http.error_handlers import EXCEPTION_HANDLERS
from app.http.jwks import JwksKeys
from app.http.metrics import (
    MetricsText,
    metrics,
    metrics_middleware,
    serve_metrics_port,
    start_queue_metrics,
)
from app.http.openapi import SECURITY_SCHEMES
from app.http.openapi_document import complete_document, schema_pages, schema_router
from app.http.request_id import request_id_middleware, send_request_id
from app.http.routes.audit import AuditController
from app.http.routes.campaigns import CampaignController
from app.http.routes.health import healthz, readyz
from app.http.routes.providers import sendgrid_events, webhook_events
from app.http.routes.rate_limits import RateLimitController
from app.http.routes.suppressions import SuppressionController, TopicSuppressionController
from app.http.routes.twilio import twilio_inbound, twilio_status
from app.http.routes.unsubscribe import unsubscribe_one_click, unsubscribe_page
from app.http.tracing_middleware import tracing_middleware
from app.services.feedback import load_sendgrid_key
from app.services.pagination import cursor_key
from app.services.previews import PREVIEW_RENDERS
from db.pool import close_pool, create_pool

logger = logging.getLogger("app")


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    _check_token_settings(settings)
    jwks = (
        JwksKeys(
            settings.jwt_jwks_url,
            refetch_seconds=settings.jwt_jwks_refetch_seconds,
            max_age_seconds=settings.jwt_jwks_max_age_seconds,
            timeout_seconds=settings.jwt_jwks_timeout_seconds,
        )
        if settings.jwt_jwks_url
        else None
    )
    settings.check_events_webhook()
    settings.check_public_base_url()
    settings.check_unsubscribe()
    sendgrid_key = None
    if settings.sendgrid_webhook_public_key:
        try:
            sendgrid_key = load_sendgrid_key(settings.sendgrid_webhook_public_key)
        except ValueError as exc:
            raise SettingsError(f"SENDGRID_WEBHOOK_PUBLIC_KEY: {exc}") from None

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if settings.dev_mode and settings.jwt_key == DEV_JWT_SECRET:
            logger.warning(
                "DEVELOPMENT MODE: tokens are verified with a fixed, public secret. "
                "Never run this way in production; set JWT_SECRET or JWT_PUBLIC_KEY."
            )
        pool = await _open_pool(settings)
        app.state.pool = pool
        if jwks is not None:
            jwks.start()
        queue_metrics = start_queue_metrics(pool, settings.metrics_refresh_seconds)
        stop_metrics_port = None
        if settings.metrics_port:
            stop_metrics_port = serve_metrics_port(settings.metrics_port)
        try:
            yield
        finally:
            if stop_metrics_port is not None:
                stop_metrics_port()
            queue_metrics.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await queue_metrics
            if jwks is not None:
                await jwks.aclose()
            await close_pool(pool)
            tracing.flush_spans()

    return Litestar(
        route_handlers=[
            CampaignController,
            SuppressionController,
            TopicSuppressionController,
            RateLimitController,
            AuditController,
            webhook_events,
            sendgrid_events,
            unsubscribe_page,
            unsubscribe_one_click,
            twilio_status,
            twilio_inbound,
            healthz,
            readyz,
            *([] if settings.metrics_port else [metrics]),  # else on its own port
        ],
        lifespan=[lifespan],
        on_startup=[
            lambda app: complete_document(
                app.openapi_schema, max_recipients=settings.publish_max_recipients
            )
        ],
        on_app_init=[build_jwt_auth(settings, jwks).on_app_init, _outermost_tracing],
        middleware=[request_id_middleware, metrics_middleware],
        before_send=[send_request_id],
        dependencies={
            "conn": Provide(provide_connection),
        },
        state=State(
            {
                "settings": settings,
                "cursor_key": cursor_key(settings.cursor_secret or settings.jwt_key or ""),
                "sendgrid_key": sendgrid_key,
                "unsubscribe_keys": UnsubscribeKeys.of(settings),
                "metrics_text": MetricsText(settings.metrics_cache_seconds),
                "preview_renders": asyncio.Semaphore(PREVIEW_RENDERS),
            }
        ),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=settings.publish_max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="messaging",
            version="1.0.0",
            description="Campaign publishing and delivery. Every error response has the "
            "`Error` body: `{error, message, details}`.",
            use_handler_docstrings=True,
            components=Components(security_schemes=dict(SECURITY_SCHEMES)),
            render_plugins=schema_pages(),
            openapi_router=schema_router(),
        ),
        logging_config=None,  # the process entry point configures logging (app/core/logs.py)
        debug=False,
    )


def _outermost_tracing(config: AppConfig) -> AppConfig:
    """With tracing on, the request's span wraps everything, authentication included
    (the JWT middleware put itself first just before)."""
    if tracing.enabled():
        config.middleware.insert(0, tracing_middleware)
    return config


def _check_token_settings(settings: Settings) -> None:
    if settings.jwt_jwks_url:
        if settings.jwt_secret or settings.jwt_public_key:
            raise SettingsError(
                "JWT_JWKS_URL excludes JWT_SECRET and JWT_PUBLIC_KEY: set one way to verify tokens"
            )
        if not settings.cursor_secret:
            raise SettingsError(
                "JWT_JWKS_URL needs CURSOR_SECRET: pagination cursors are encrypted with it, "
                "and a JWKS holds no secret to derive it from"
            )
    elif settings.jwt_public_key and not settings.cursor_secret:
        raise SettingsError(
            "JWT_PUBLIC_KEY needs CURSOR_SECRET: pagination cursors are encrypted with it, "
            "and a public key is no secret to derive it from"
        )
    elif settings.jwt_key is None:
        raise SettingsError(
            "no JWT key: set JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL "
            "(or MESSAGING_DEV_MODE=1 for local development only)"
        )


async def _open_pool(settings: Settings) -> asyncpg.Pool:
    """The pool, warm when the database answers; else empty (connections are made on
    demand), so that the process starts anyway and /readyz turns 200 once it is back."""
    try:
        return await create_pool(
            settings.database_url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        logger.warning("database unreachable at start (%s); not ready until it answers", exc)
        return await create_pool(
            settings.database_url, min_size=0, max_size=settings.db_pool_max_size
        )


def web() -> Litestar:
    """The web process (`uvicorn --factory app.http.asgi:web`): JSON logs, settings from the env."""
    settings = get_settings()
    configure_logging(settings.log_level)
    configure_tracing(settings)
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_heap)  # the last hook: after all of startup
    return app


def _freeze_startup_heap(app: Litestar) -> None:
    """What the process built to start (modules, routes, the OpenAPI document, the pool)
    lives as long as it does. Frozen, it leaves the collector's generations, and a full
    collection no longer walks it: under a traced publish load, those walks made the p99
    (docs/performance.md, "Tracing")."""
    gc.freeze()
