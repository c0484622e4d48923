"""/v1/messaging/brands/{brand_id}/rate-limit: a brand's own caps on sends per second."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, put
from litestar.params import Body

from app.domain.access import READ, WRITE
from app.domain.schemas import RateLimit
from app.http.body import SMALL_BODY_BYTES, MsgspecJSON
from app.http.openapi import access
from app.http.raw_params import raw_params_middleware
from app.http.routes.campaigns import AuthRequest, Conn
from app.http.routes.params import BrandPath
from app.services.rate_limits import get_rate_limit, put_rate_limit


class RateLimitController(Controller):
    path = "/v1/messaging/brands/{brand_id:str}/rate-limit"
    tags = ["rate limits"]  # noqa: RUF012 - Litestar declares it as a list
    middleware = [raw_params_middleware]  # noqa: RUF012

    @get(operation_id="readRateLimit", **access(READ, 400))
    async def read(self, request: AuthRequest, conn: Conn, brand_id: BrandPath) -> RateLimit:
        """The brand's own caps (messages per second); `null`: none of its own."""
        return await get_rate_limit(conn, brand_id, request.auth)

    @put(
        dto=MsgspecJSON[RateLimit],
        return_dto=None,
        request_max_body_size=SMALL_BODY_BYTES,
        operation_id="putRateLimit",
        **access(WRITE, 400, 413, 415),
    )
    async def put(
        self,
        request: AuthRequest,
        conn: Conn,
        brand_id: BrandPath,
        data: Annotated[RateLimit, Body()],
    ) -> RateLimit:
        """Set both of the brand's caps: every worker sends at most this many messages per
        second of the brand on that channel (and never more than EMAIL_RATE_LIMIT /
        SMS_RATE_LIMIT), within a second of this answer. `null` removes a cap."""
        return await put_rate_limit(conn, brand_id, data, request.auth)
