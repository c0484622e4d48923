"""/v1/messaging/campaigns and the runs under them."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from litestar import Controller, Request, Response, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import Body, FromQuery, SkipValidation

from app.domain.access import PUBLISH, READ, WRITE
from app.domain.schemas import (
    Campaign,
    CampaignCreate,
    CampaignPage,
    CampaignStatus,
    CampaignUpdate,
    DeliveryPage,
    DeliveryStatus,
    Preview,
    PreviewRequest,
    PublishRequest,
    Run,
    RunPage,
    RunStatus,
)
from app.http.auth import AccessToken
from app.http.body import CAMPAIGN_BODY_BYTES, SMALL_BODY_BYTES, MsgspecJSON
from app.http.openapi import access
from app.http.raw_params import raw_params_middleware
from app.http.routes.params import (
    BrandFilter,
    CampaignId,
    Cursor,
    IdempotencyKeyHeader,
    Limit,
    RunId,
)
from app.services.campaigns import (
    campaign_of,
    change_status,
    create_campaign,
    list_campaigns,
    update_campaign,
    visible_campaign,
)
from app.services.idempotency import idempotency_key
from app.services.pagination import DEFAULT_LIMIT
from app.services.previews import preview_message
from app.services.publishing import publish_campaign, retry_failed
from app.services.runs import cancel_run, list_deliveries, list_runs, visible_run

# The one injected dependency. The caller is `request.auth` and the settings live on
# `state`: a second dependency would make Litestar resolve them in an anyio task group,
# a measurable cost on the 1-recipient publish path.
Conn = NamedDependency[SkipValidation[asyncpg.Connection]]
AuthRequest = Request[str, AccessToken, State]


class CampaignController(Controller):
    path = "/v1/messaging/campaigns"
    tags = ["campaigns"]  # noqa: RUF012 - Litestar declares it as a list
    middleware = [raw_params_middleware]  # noqa: RUF012

    @post(
        status_code=201,
        dto=MsgspecJSON[CampaignCreate],
        return_dto=None,
        request_max_body_size=CAMPAIGN_BODY_BYTES,
        operation_id="createCampaign",
        **access(WRITE, 400, 413, 415),
    )
    async def create(
        self, request: AuthRequest, conn: Conn, data: Annotated[CampaignCreate, Body()]
    ) -> Campaign:
        """Create a draft campaign."""
        return await create_campaign(conn, data, request.auth)

    @get(operation_id="listCampaigns", **access(READ, 400))
    async def index(
        self,
        request: AuthRequest,
        conn: Conn,
        state: State,
        brand_id: BrandFilter = None,
        status: FromQuery[CampaignStatus | None] = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> CampaignPage:
        """The campaigns of the token's brands (or of `brand_id`), newest first."""
        return await list_campaigns(
            conn,
            request.auth,
            brand_id=brand_id,
            status=status,
            limit=limit,
            cursor=cursor,
            cursor_key=state.cursor_key,
        )

    @get("/{id:str}", operation_id="readCampaign", **access(READ, 400, 404))
    async def read(self, request: AuthRequest, conn: Conn, id: CampaignId) -> Campaign:
        return campaign_of(await visible_campaign(conn, id, request.auth))

    @patch(
        "/{id:str}",
        dto=MsgspecJSON[CampaignUpdate],
        return_dto=None,
        request_max_body_size=CAMPAIGN_BODY_BYTES,
        operation_id="updateCampaign",
        **access(WRITE, 400, 404, 412, 413, 415),
    )
    async def update(
        self,
        request: AuthRequest,
        conn: Conn,
        id: CampaignId,
        data: Annotated[CampaignUpdate, Body()],
    ) -> Campaign:
        """Change the content of a draft: absent fields stay, `null` clears `sender` or
        `subject`. 412 once the campaign is active or archived."""
        return await update_campaign(conn, id, data, request.auth)

    @post(
        "/{id:str}/activate",
        status_code=200,
        operation_id="activateCampaign",
        **access(WRITE, 400, 404, 412),
    )
    async def activate(self, request: AuthRequest, conn: Conn, id: CampaignId) -> Campaign:
        """`draft` -> `active`; the content must be complete (400 if not)."""
        return await change_status(conn, id, request.auth, to="active", allowed=["draft"])

    @post(
        "/{id:str}/archive",
        status_code=200,
        operation_id="archiveCampaign",
        **access(WRITE, 400, 404, 412),
    )
    async def archive(self, request: AuthRequest, conn: Conn, id: CampaignId) -> Campaign:
        """`draft` or `active` -> `archived`; queued and running runs go on."""
        return await change_status(
            conn, id, request.auth, to="archived", allowed=["draft", "active"]
        )

    @post(
        "/{id:str}/preview",
        status_code=200,
        dto=MsgspecJSON[PreviewRequest],
        return_dto=None,
        request_max_body_size=SMALL_BODY_BYTES,
        operation_id="previewCampaign",
        **access(READ, 400, 404, 413, 415),
    )
    async def preview(
        self,
        request: AuthRequest,
        state: State,
        id: CampaignId,
        data: Annotated[PreviewRequest, Body()],
    ) -> Preview:
        """The campaign's message (in any status) rendered for one recipient, as a worker
        would render it: 400 naming the `data` path a template needs and the data lacks,
        or the variable or bound of a render that fails. Nothing is stored or sent."""
        return await preview_message(
            state.pool,
            id,
            data,
            request.auth,
            pool_timeout=state.settings.db_pool_timeout_seconds,
            renders=state.preview_renders,
            max_data_bytes=state.settings.publish_max_data_bytes,
            unsubscribe=state.unsubscribe_keys,
        )

    @post(
        "/{id:str}/publish",
        status_code=202,
        dto=MsgspecJSON[PublishRequest],
        return_dto=None,
        operation_id="publishCampaign",
        **access(PUBLISH, 400, 404, 409, 412, 413, 415, 422),
    )
    async def publish(
        self,
        request: AuthRequest,
        conn: Conn,
        state: State,
        id: CampaignId,
        data: Annotated[PublishRequest, Body()],
        idempotency_key_header: IdempotencyKeyHeader = None,
    ) -> Response[Run]:
        """Queue a run of an active campaign to the recipients: the run, one delivery
        per recipient and the jobs that deliver them commit in one transaction. With
        `send_at` the run is `scheduled` and delivery starts at that instant (at most
        5 minutes in the past, 90 days ahead). A recipient's `time_zone` places it for
        the campaign's quiet hours; its `data` fills the campaign's templates, and a
        recipient whose data lacks what they read without a default is `skipped`
        (`missing_data`)."""
        run = await publish_campaign(
            conn,
            id,
            data.recipients,
            request.auth,
            max_recipients=state.settings.publish_max_recipients,
            batch_size=state.settings.delivery_batch_size,
            idempotency_key=idempotency_key(idempotency_key_header, data),
            send_at=data.send_at,
            pool=state.pool,
            max_data_bytes=state.settings.publish_max_data_bytes,
        )
        location = f"{self.path}/{run.campaign_id}/runs/{run.id}"
        return Response(run, status_code=202, headers={"Location": location})

    @get("/{id:str}/runs", operation_id="listRuns", **access(READ, 400, 404))
    async def runs(
        self,
        request: AuthRequest,
        conn: Conn,
        state: State,
        id: CampaignId,
        status: FromQuery[RunStatus | None] = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> RunPage:
        """The campaign's runs (of one `status`, if given: `scheduled` lists those waiting
        for their `send_at`), newest first."""
        return await list_runs(
            conn,
            id,
            request.auth,
            status=status,
            limit=limit,
            cursor=cursor,
            cursor_key=state.cursor_key,
        )

    @get("/{id:str}/runs/{run_id:str}", operation_id="readRun", **access(READ, 400, 404))
    async def read_run(
        self, request: AuthRequest, conn: Conn, id: CampaignId, run_id: RunId
    ) -> Run:
        """The run, with live counters."""
        return Run(**await visible_run(conn, id, run_id, request.auth))

    @post(
        "/{id:str}/runs/{run_id:str}/cancel",
        status_code=200,
        operation_id="cancelRun",
        **access(PUBLISH, 400, 404, 412),
    )
    async def cancel(self, request: AuthRequest, conn: Conn, id: CampaignId, run_id: RunId) -> Run:
        """Pending deliveries become `skipped` (reason `cancelled`); sends in flight finish
        first, and none follows. 412 if the run already ended."""
        return await cancel_run(conn, id, run_id, request.auth)

    @post(
        "/{id:str}/runs/{run_id:str}/retry",
        status_code=202,
        operation_id="retryRun",
        **access(
            PUBLISH,
            *(400, 404, 409, 410, 412, 422),
            s412="The run has not ended, or has no failed delivery (`bad_state`); or its "
            "recipients' data was erased, DELIVERY_DATA_DAYS after it ended (`data_erased`).",
        ),
    )
    async def retry(
        self,
        request: AuthRequest,
        conn: Conn,
        state: State,
        id: CampaignId,
        run_id: RunId,
        idempotency_key_header: IdempotencyKeyHeader = None,
    ) -> Response[Run]:
        """Queue a new run (`retry_of`: this run) of exactly the run's `failed` deliveries,
        published like any run: duplicates, invalid addresses and suppressions (also those
        added since) are skipped, and `Idempotency-Key` makes a repeat safe. The original
        run is not changed, and the new one carries each recipient's original `data`. 412
        while the run has not ended, or if nothing failed; 412 `data_erased` once its data
        is past DELIVERY_DATA_DAYS; 410 once its deliveries are past
        DELIVERY_RETENTION_DAYS."""
        run = await retry_failed(
            conn,
            id,
            run_id,
            request.auth,
            batch_size=state.settings.delivery_batch_size,
            idempotency_key_header=idempotency_key_header,
            pool=state.pool,
            retention=state.settings.delivery_retention,
            data_retention=state.settings.delivery_data_retention,
        )
        location = f"{self.path}/{run.campaign_id}/runs/{run.id}"
        return Response(run, status_code=202, headers={"Location": location})

    @get(
        "/{id:str}/runs/{run_id:str}/deliveries",
        operation_id="listDeliveries",
        **access(READ, 400, 404, 410),
    )
    async def deliveries(
        self,
        request: AuthRequest,
        conn: Conn,
        state: State,
        id: CampaignId,
        run_id: RunId,
        status: FromQuery[DeliveryStatus | None] = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> DeliveryPage:
        """The fate of each recipient of the run, in the order of the publish request.
        410 once the run's deliveries are past DELIVERY_RETENTION_DAYS."""
        return await list_deliveries(
            conn,
            id,
            run_id,
            request.auth,
            status=status,
            limit=limit,
            cursor=cursor,
            cursor_key=state.cursor_key,
            retention=state.settings.delivery_retention,
        )
