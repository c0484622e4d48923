"""Business rules of campaigns: who may see them, and how their status moves."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from app.auth import AccessToken
from app.errors import BadState, ForbiddenBrand, InvalidInput, NotFound
from app.schemas import Campaign, CampaignCreate
from db.campaigns import CampaignRepository, Lock


def parse_id(value: str, what: str) -> UUID:
    """Ids are opaque to callers: one that cannot be ours is simply not found."""
    try:
        return UUID(value)
    except ValueError:
        raise NotFound(f"{what} {value} does not exist") from None


async def visible_campaign(
    conn: asyncpg.Connection, campaign_id: str, caller: AccessToken, *, lock: Lock = None
) -> asyncpg.Record:
    """The campaign, if it exists in a brand of the caller's; otherwise NotFound."""
    record = await CampaignRepository(conn).get(parse_id(campaign_id, "campaign"), lock=lock)
    if record is None or not caller.may_act_for(record["brand_id"]):
        raise NotFound(f"campaign {campaign_id} does not exist")
    return record


async def create_campaign(
    conn: asyncpg.Connection, data: CampaignCreate, caller: AccessToken
) -> Campaign:
    if not caller.may_act_for(data.brand_id):
        raise ForbiddenBrand(
            f"this token may not act for brand {data.brand_id}", {"brand_id": data.brand_id}
        )
    if data.channel == "email" and data.subject is None:
        raise InvalidInput(
            "an e-mail campaign needs a subject", {"$.subject": "required for channel email"}
        )
    record = await CampaignRepository(conn).create(
        brand_id=data.brand_id,
        name=data.name,
        channel=data.channel,
        sender=data.sender,
        subject=data.subject,
        body=data.body,
        created_by=caller.sub,
    )
    return Campaign(**record)


def missing_content(campaign: asyncpg.Record) -> dict[str, str]:
    """JSON path -> problem, for every part a campaign needs before it can be sent."""
    missing = {}
    for field in ("name", "body"):
        if not campaign[field]:
            missing[f"$.{field}"] = "required before activation"
    if campaign["channel"] == "email" and not campaign["subject"]:
        missing["$.subject"] = "required before activation of an e-mail campaign"
    return missing


async def change_status(
    conn: asyncpg.Connection, campaign_id: str, caller: AccessToken, *, to: str, allowed: list[str]
) -> Campaign:
    """Move a campaign from one of `allowed` to `to`; BadState from anywhere else."""
    async with conn.transaction():
        campaign = await visible_campaign(conn, campaign_id, caller, lock="update")
        if campaign["status"] not in allowed:
            raise BadState(
                f"campaign is {campaign['status']}; it can become {to} only from "
                + " or ".join(allowed),
                status=campaign["status"],
                allowed=allowed,
            )
        if to == "active" and (missing := missing_content(campaign)):
            raise InvalidInput("campaign content is incomplete", missing)
        record = await CampaignRepository(conn).set_status(campaign["id"], to)
    return Campaign(**record)
