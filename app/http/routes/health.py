"""Liveness and readiness probes (no auth)."""

from __future__ import annotations

import asyncpg
from litestar import Response, get
from litestar.datastructures import State

from app.domain.schemas import Error, Health
from app.http.error_handlers import error_response
from app.http.openapi import error_responses
from db.pool import DATABASE_UNAVAILABLE

PUBLIC: list[dict[str, list[str]]] = [{}]  # OpenAPI: no token needed


@get("/healthz", tags=["health"], security=PUBLIC, operation_id="healthz")
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@get(
    "/readyz",
    tags=["health"],
    security=PUBLIC,
    operation_id="readyz",
    responses=error_responses(503),
)
async def readyz(state: State) -> Response[Health] | Response[Error]:
    """The process can reach the database."""
    pool: asyncpg.Pool = state.pool
    try:
        async with pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
    except DATABASE_UNAVAILABLE as exc:
        return error_response(503, "unavailable", f"database unreachable: {type(exc).__name__}")
    return Response(Health(status="ready"))
