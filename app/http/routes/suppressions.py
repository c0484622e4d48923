"""/v1/messaging/brands/{brand_id}/suppressions: addresses a brand never sends to again;
/v1/messaging/brands/{brand_id}/topics/{topic}/suppressions: those it never sends a
campaign of that topic to again."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, put
from litestar.datastructures import State
from litestar.params import Body, FromQuery

from app.domain.access import READ, WRITE
from app.domain.schemas import Suppression, SuppressionPage, SuppressionPut, SuppressionReason
from app.http.body import SMALL_BODY_BYTES, MsgspecJSON
from app.http.openapi import access
from app.http.raw_params import raw_params_middleware
from app.http.routes.campaigns import AuthRequest, Conn
from app.http.routes.params import (
    BrandPath,
    Cursor,
    Limit,
    RecipientPath,
    TopicFilter,
    TopicPath,
)
from app.services.pagination import DEFAULT_LIMIT
from app.services.suppressions import (
    delete_suppression,
    get_suppression,
    list_suppressions,
    put_suppression,
)


class SuppressionController(Controller):
    path = "/v1/messaging/brands/{brand_id:str}/suppressions"
    tags = ["suppressions"]  # noqa: RUF012 - Litestar declares it as a list
    middleware = [raw_params_middleware]  # noqa: RUF012

    @get(operation_id="listSuppressions", **access(READ, 400))
    async def index(
        self,
        request: AuthRequest,
        conn: Conn,
        state: State,
        brand_id: BrandPath,
        reason: FromQuery[SuppressionReason | None] = None,
        topic: TopicFilter = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> SuppressionPage:
        """The brand's suppressions, brand-wide (`topic` null) and of each topic, in
        address order (an address's brand-wide one first); `topic`: that topic's only."""
        return await list_suppressions(
            conn,
            brand_id,
            request.auth,
            reason=reason,
            topic=topic,
            limit=limit,
            cursor=cursor,
            cursor_key=state.cursor_key,
        )

    @get("/{recipient:str}", operation_id="readSuppression", **access(READ, 400, 404))
    async def read(
        self, request: AuthRequest, conn: Conn, brand_id: BrandPath, recipient: RecipientPath
    ) -> Suppression:
        """Whether, and why, the address is suppressed (404 if it is not)."""
        return await get_suppression(conn, brand_id, recipient, request.auth)

    @put(
        "/{recipient:str}",
        dto=MsgspecJSON[SuppressionPut],
        return_dto=None,
        request_max_body_size=SMALL_BODY_BYTES,
        operation_id="putSuppression",
        **access(WRITE, 400, 413, 415),
    )
    async def put(
        self,
        request: AuthRequest,
        conn: Conn,
        brand_id: BrandPath,
        recipient: RecipientPath,
        data: Annotated[SuppressionPut, Body()],
    ) -> Suppression:
        """Never send to this address again (for this brand, whatever the campaign's
        topic). Idempotent: a repeat, or a new `reason`, answers 200 with the suppression
        as stored. Publish and the worker compare addresses normalised (e-mail
        lower-cased); so is the one kept. A new suppression is a `suppression.created`
        event on EVENTS_WEBHOOK_URL."""
        return await put_suppression(conn, brand_id, recipient, data.reason, request.auth)

    @delete(
        "/{recipient:str}",
        status_code=204,
        operation_id="deleteSuppression",
        **access(WRITE, 400, 404),
    )
    async def remove(
        self, request: AuthRequest, conn: Conn, brand_id: BrandPath, recipient: RecipientPath
    ) -> None:
        """Send to this address again; 404 if it was not suppressed."""
        await delete_suppression(conn, brand_id, recipient, request.auth)


class TopicSuppressionController(Controller):
    path = "/v1/messaging/brands/{brand_id:str}/topics/{topic:str}/suppressions"
    tags = ["suppressions"]  # noqa: RUF012 - Litestar declares it as a list
    middleware = [raw_params_middleware]  # noqa: RUF012

    @get("/{recipient:str}", operation_id="readTopicSuppression", **access(READ, 400, 404))
    async def read(
        self,
        request: AuthRequest,
        conn: Conn,
        brand_id: BrandPath,
        topic: TopicPath,
        recipient: RecipientPath,
    ) -> Suppression:
        """Whether, and why, the address is suppressed for the topic (404 if it is not;
        a brand-wide suppression is read at .../suppressions/{recipient})."""
        return await get_suppression(conn, brand_id, recipient, request.auth, topic)

    @put(
        "/{recipient:str}",
        dto=MsgspecJSON[SuppressionPut],
        return_dto=None,
        request_max_body_size=SMALL_BODY_BYTES,
        operation_id="putTopicSuppression",
        **access(WRITE, 400, 413, 415),
    )
    async def put(
        self,
        request: AuthRequest,
        conn: Conn,
        brand_id: BrandPath,
        topic: TopicPath,
        recipient: RecipientPath,
        data: Annotated[SuppressionPut, Body()],
    ) -> Suppression:
        """Never send a campaign of this topic to this address again; campaigns of other
        topics, and service mail (no topic), still reach it. Idempotent like the
        brand-wide PUT; a new suppression is a `suppression.created` event."""
        return await put_suppression(conn, brand_id, recipient, data.reason, request.auth, topic)

    @delete(
        "/{recipient:str}",
        status_code=204,
        operation_id="deleteTopicSuppression",
        **access(WRITE, 400, 404),
    )
    async def remove(
        self,
        request: AuthRequest,
        conn: Conn,
        brand_id: BrandPath,
        topic: TopicPath,
        recipient: RecipientPath,
    ) -> None:
        """Send campaigns of this topic to this address again; 404 if it was not
        suppressed for the topic (a brand-wide suppression stays)."""
        await delete_suppression(conn, brand_id, recipient, request.auth, topic)
