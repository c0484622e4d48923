"""/v1/messaging/campaigns and the runs under them."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import Body, FromPath, SkipValidation

from app.auth import PUBLISH, READ, WRITE, AccessToken, requires
from app.body import decode_body
from app.campaigns import change_status, create_campaign, visible_campaign
from app.publishing import publish_campaign
from app.runs import cancel_run, visible_run
from app.schemas import Campaign, CampaignCreate, PublishRequest, Run

# The one injected dependency. The caller is `request.auth` and the settings live on
# `state`: a second dependency would make Litestar resolve them in an anyio task group,
# a measurable cost on the 1-recipient publish path.
Conn = NamedDependency[SkipValidation[asyncpg.Connection]]
AuthRequest = Request[str, AccessToken, State]


class CampaignController(Controller):
    path = "/v1/messaging/campaigns"
    tags = ["campaigns"]  # noqa: RUF012 - Litestar declares it as a list

    @post(guards=[requires(WRITE)], status_code=201)
    async def create(
        self, request: AuthRequest, conn: Conn, data: Annotated[CampaignCreate, Body()]
    ) -> Campaign:
        return await create_campaign(conn, data, request.auth)

    @get("/{campaign_id:str}", guards=[requires(READ)])
    async def read(self, request: AuthRequest, conn: Conn, campaign_id: FromPath[str]) -> Campaign:
        return Campaign(**await visible_campaign(conn, campaign_id, request.auth))

    @post("/{campaign_id:str}/activate", guards=[requires(WRITE)], status_code=200)
    async def activate(
        self, request: AuthRequest, conn: Conn, campaign_id: FromPath[str]
    ) -> Campaign:
        return await change_status(conn, campaign_id, request.auth, to="active", allowed=["draft"])

    @post("/{campaign_id:str}/archive", guards=[requires(WRITE)], status_code=200)
    async def archive(
        self, request: AuthRequest, conn: Conn, campaign_id: FromPath[str]
    ) -> Campaign:
        return await change_status(
            conn, campaign_id, request.auth, to="archived", allowed=["draft", "active"]
        )

    @post("/{campaign_id:str}/publish", guards=[requires(PUBLISH)], status_code=202)
    async def publish(
        self,
        request: AuthRequest,
        conn: Conn,
        state: State,
        campaign_id: FromPath[str],
    ) -> Response[Run]:
        body = await decode_body(request, PublishRequest)
        run = await publish_campaign(
            conn,
            campaign_id,
            body.recipients,
            request.auth,
            max_recipients=state.settings.publish_max_recipients,
            batch_size=state.settings.delivery_batch_size,
        )
        location = f"{self.path}/{run.campaign_id}/runs/{run.id}"
        return Response(run, status_code=202, headers={"Location": location})

    @get("/{campaign_id:str}/runs/{run_id:str}", guards=[requires(READ)])
    async def read_run(
        self, request: AuthRequest, conn: Conn, campaign_id: FromPath[str], run_id: FromPath[str]
    ) -> Run:
        return Run(**await visible_run(conn, campaign_id, run_id, request.auth))

    @post(
        "/{campaign_id:str}/runs/{run_id:str}/cancel", guards=[requires(PUBLISH)], status_code=200
    )
    async def cancel_run(
        self, request: AuthRequest, conn: Conn, campaign_id: FromPath[str], run_id: FromPath[str]
    ) -> Run:
        return await cancel_run(conn, campaign_id, run_id, request.auth)
