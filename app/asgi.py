"""The web process: `create_app()` builds the Litestar app from the settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from app.auth import build_jwt_auth
from app.dependencies import provide_connection
from app.error_handlers import EXCEPTION_HANDLERS
from app.logs import configure_logging
from app.metrics import metrics, metrics_middleware
from app.openapi import complete_document
from app.pagination import cursor_key
from app.request_id import request_id_middleware, send_request_id
from app.routes.campaigns import CampaignController
from app.routes.health import healthz, readyz
from app.routes.suppressions import SuppressionController
from app.settings import Settings, SettingsError, get_settings
from db.pool import create_pool

logger = logging.getLogger("app")


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    if settings.jwt_key is None:
        raise SettingsError(
            "no JWT key: set JWT_SECRET or JWT_PUBLIC_KEY "
            "(or MESSAGING_DEV_MODE=1 for local development only)"
        )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if settings.dev_mode and not (settings.jwt_secret or settings.jwt_public_key):
            logger.warning(
                "DEVELOPMENT MODE: tokens are verified with a fixed, public secret. "
                "Never run this way in production; set JWT_SECRET or JWT_PUBLIC_KEY."
            )
        pool = await _open_pool(settings)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    return Litestar(
        route_handlers=[CampaignController, SuppressionController, healthz, readyz, metrics],
        lifespan=[lifespan],
        on_startup=[
            lambda app: complete_document(
                app.openapi_schema, max_recipients=settings.publish_max_recipients
            )
        ],
        on_app_init=[build_jwt_auth(settings).on_app_init],
        middleware=[request_id_middleware, metrics_middleware],
        before_send=[send_request_id],
        dependencies={
            "conn": Provide(provide_connection),
        },
        state=State(
            {
                "settings": settings,
                "cursor_key": cursor_key(settings.cursor_secret or settings.jwt_key),
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
        ),
        logging_config=None,  # the process entry point configures logging (app/logs.py)
        debug=False,
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
    """The web process (`uvicorn --factory app.asgi:web`): JSON logs, settings from the env."""
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
