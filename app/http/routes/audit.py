"""/v1/messaging/brands/{brand_id}/audit: who changed what for the brand, and when."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import FromQuery, QueryParameter

from app.domain.access import AUDIT_READ
from app.domain.schemas import AuditAction, AuditPage
from app.http.openapi import access
from app.http.raw_params import raw_params_middleware
from app.http.routes.campaigns import AuthRequest, Conn
from app.http.routes.params import BrandPath, Cursor, Limit
from app.services.audit import list_audit
from app.services.pagination import DEFAULT_LIMIT

NO_NUL = "^[^\\x00]*$"
"""PostgreSQL cannot compare text with NUL in it: refused as what no row can hold."""

ActorFilter = Annotated[
    str | None,
    QueryParameter(
        min_length=1,
        max_length=512,
        pattern=NO_NUL,
        description="Only the changes of this actor: a token's `sub`, `provider:webhook`, "
        "`provider:sendgrid`, `provider:twilio` or `recipient`.",
    ),
]
TargetFilter = Annotated[
    str | None,
    QueryParameter(
        min_length=1,
        max_length=320,
        pattern=NO_NUL,
        description="Only the changes of this target: a campaign's or run's id, a "
        "suppression's address (as stored: e-mail lower-cased), a brand's id (rate limit).",
    ),
]
Instant = Annotated[
    str | None,
    QueryParameter(
        max_length=64,
        schema_extra={"format": "date-time"},
        description="An RFC 3339 date-time with its offset.",
    ),
]


class AuditController(Controller):
    path = "/v1/messaging/brands/{brand_id:str}/audit"
    tags = ["audit"]  # noqa: RUF012 - Litestar declares it as a list
    middleware = [raw_params_middleware]  # noqa: RUF012

    @get(
        operation_id="listAuditEvents",
        **access(AUDIT_READ, 400, 404, s404="No such brand among the brands of the token."),
    )
    async def index(
        self,
        request: AuthRequest,
        conn: Conn,
        state: State,
        brand_id: BrandPath,
        action: FromQuery[AuditAction | None] = None,
        actor: ActorFilter = None,
        target_id: TargetFilter = None,
        since: Instant = None,
        until: Instant = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> AuditPage:
        """Every change to the brand's campaigns, runs, suppressions and rate limit, newest
        first: who (`actor`), what (`action`, `changes`), to what (`target_type`,
        `target_id`), when, and by which request. `since` (inclusive) and `until`
        (exclusive) bound `occurred_at`. Kept AUDIT_RETENTION_DAYS (six years)."""
        return await list_audit(
            conn,
            brand_id,
            request.auth,
            action=action,
            actor=actor,
            target_id=target_id,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
            cursor_key=state.cursor_key,
        )
