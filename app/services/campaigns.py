"""Business rules of campaigns: who may see them, and how their status moves."""

from __future__ import annotations

from uuid import UUID

import asyncpg
import msgspec
from msgspec import UNSET

from app.domain.access import Caller
from app.domain.errors import BadState, ForbiddenBrand, InvalidInput, NotFound
from app.domain.schedule import check_zone
from app.domain.schemas import (
    Campaign,
    CampaignCreate,
    CampaignPage,
    CampaignUpdate,
    CampaignWarning,
    QuietHours,
)
from app.domain.templates import CampaignTemplates, TemplateError, reads_variable
from app.services.pagination import ByCreation, decode_cursor, listing_of, split_page
from db.audit import Action, AuditEvent, changes_between, record_audit
from db.campaigns import CampaignRepository, Lock

CONTENT_FIELDS = (
    "name", "channel", "body", "subject", "sender", "priority", "quiet_hours", "topic",
    "html_body",
)  # fmt: skip
TEXT_FIELDS = ("subject", "body", "html_body")
"""The message's words: the audit trail says that they changed, never what they say."""
AUDITED_FIELDS = tuple(f for f in CONTENT_FIELDS if f not in TEXT_FIELDS)
STATUS_ACTIONS: dict[str, Action] = {
    "active": "campaign.activated",
    "archived": "campaign.archived",
}


def parse_id(value: str, what: str) -> UUID:
    """Ids are opaque to callers: one that cannot be ours is simply not found."""
    try:
        return UUID(value)
    except ValueError:
        raise NotFound(f"{what} {value} does not exist") from None


def require_brand(caller: Caller, brand_id: str) -> None:
    """A brand named by the caller (in a body, a path or a filter) must be one of the
    token's: ForbiddenBrand otherwise. Brands are not resources of this service, so
    there is no existence to hide here; ids of campaigns and runs are (NotFound)."""
    if not caller.may_act_for(brand_id):
        raise ForbiddenBrand(f"this token may not act for brand {brand_id}", {"brand_id": brand_id})


async def visible_campaign(
    conn: asyncpg.Connection, campaign_id: str, caller: Caller, *, lock: Lock = None
) -> asyncpg.Record:
    """The campaign, if it exists in a brand of the caller's; otherwise NotFound."""
    record = await CampaignRepository(conn).get(parse_id(campaign_id, "campaign"), lock=lock)
    return _visible(record, campaign_id, caller)


async def campaign_to_publish(
    conn: asyncpg.Connection, campaign_id: str, caller: Caller
) -> asyncpg.Record:
    """visible_campaign, share-locked, with `has_suppressions` (CampaignRepository)."""
    record = await CampaignRepository(conn).get_to_publish(parse_id(campaign_id, "campaign"))
    return _visible(record, campaign_id, caller)


def _visible(record: asyncpg.Record | None, campaign_id: str, caller: Caller) -> asyncpg.Record:
    if record is None or not caller.may_act_for(record["brand_id"]):
        raise NotFound(f"campaign {campaign_id} does not exist")
    return record


def campaign_of(record: asyncpg.Record) -> Campaign:
    """The API's view of a campaign row."""
    fields = dict(record)
    if fields["quiet_hours"] is not None:  # a jsonb object, validated when written
        fields["quiet_hours"] = msgspec.convert(fields["quiet_hours"], QuietHours)
    fields["warnings"] = content_warnings(record)
    return Campaign(**fields)


def content_warnings(campaign: asyncpg.Record) -> list[CampaignWarning]:
    """What the content lacks for its kind of mail. Gmail asks bulk senders for a visible
    unsubscribe link in the body of subscription mail, beside the List-Unsubscribe header
    every e-mail of a topic gets; service mail has no unsubscribe link to show."""
    reads_link = reads_variable(campaign["body"], "unsubscribe_url")
    if campaign["topic"] is not None and campaign["channel"] == "email" and not reads_link:
        return [
            CampaignWarning(
                "no_unsubscribe_url",
                "the campaign has a topic, and its body shows no {{ unsubscribe_url }}: "
                "mailbox providers ask bulk senders for a visible unsubscribe link",
            )
        ]
    if campaign["topic"] is None and reads_link:
        return [
            CampaignWarning(
                "unsubscribe_url_without_topic",
                "the body reads unsubscribe_url, which only a campaign with a topic has",
            )
        ]
    return []


def check_quiet_hours(quiet_hours: QuietHours | None) -> None:
    """InvalidInput naming the path of what msgspec's types cannot say: an empty window,
    an unknown zone."""
    if quiet_hours is None:
        return
    if quiet_hours.start == quiet_hours.end:
        raise InvalidInput(
            "quiet hours must end at another time than they start",
            {"$.quiet_hours.end": "equals start; omit quiet_hours for none"},
        )
    check_zone(quiet_hours.time_zone, "$.quiet_hours.time_zone")


def check_texts(channel: str, subject: str | None, body: str, html_body: str | None) -> None:
    """InvalidInput naming the field: an e-mail without a subject, HTML for an SMS, a text
    that is not a template this service can render (and the line of the problem)."""
    if channel == "email" and subject is None:
        raise InvalidInput(
            "an e-mail campaign needs a subject", {"$.subject": "required for channel email"}
        )
    if channel != "email" and html_body is not None:
        raise InvalidInput(
            "only an e-mail campaign has an HTML body", {"$.html_body": "e-mail campaigns only"}
        )
    try:
        CampaignTemplates.compile(subject, body, html_body)
    except TemplateError as exc:
        raise InvalidInput(
            f"{exc.field} is not a valid template",
            {f"$.{exc.field}": f"line {exc.line}: {exc.problem}"},
        ) from None


async def create_campaign(
    conn: asyncpg.Connection, data: CampaignCreate, caller: Caller
) -> Campaign:
    require_brand(caller, data.brand_id)
    check_texts(data.channel, data.subject, data.body, data.html_body)
    check_quiet_hours(data.quiet_hours)
    async with conn.transaction():
        record = await CampaignRepository(conn).create(
            brand_id=data.brand_id,
            name=data.name,
            channel=data.channel,
            sender=data.sender,
            subject=data.subject,
            body=data.body,
            created_by=caller.sub,
            priority=data.priority,
            quiet_hours=data.quiet_hours,
            topic=data.topic,
            html_body=data.html_body,
        )
        await _audit(conn, caller, "campaign.created", None, record)
    return campaign_of(record)


async def _audit(
    conn: asyncpg.Connection,
    caller: Caller,
    action: Action,
    old: asyncpg.Record | None,
    new: asyncpg.Record,
) -> None:
    changes = changes_between(old, new, (*AUDITED_FIELDS, "status"), TEXT_FIELDS)
    if changes:  # a PATCH that sets what was there changes nothing, and records nothing
        event = AuditEvent(new["brand_id"], caller.sub, action, "campaign", str(new["id"]), changes)
        await record_audit(conn, event)


async def list_campaigns(
    conn: asyncpg.Connection,
    caller: Caller,
    *,
    brand_id: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
    cursor_key: bytes,
) -> CampaignPage:
    """The caller's campaigns (of `brand_id` only, if given), newest first."""
    if brand_id is not None:
        require_brand(caller, brand_id)
        brands: list[str] | None = [brand_id]
    else:
        brands = None if caller.all_brands else list(caller.brands)
    listing = listing_of(caller.brands, "campaigns", brand_id, status)
    after = decode_cursor(cursor_key, listing, cursor, ByCreation) if cursor else None
    if brands == []:
        return CampaignPage(items=[], next_cursor=None)
    rows = await CampaignRepository(conn).page(
        brands=brands, status=status, after=after, limit=limit + 1
    )
    page, next_cursor = split_page(
        rows, limit, cursor_key, listing, lambda row: (row["created_at"], row["id"])
    )
    return CampaignPage(items=[campaign_of(row) for row in page], next_cursor=next_cursor)


async def update_campaign(
    conn: asyncpg.Connection, campaign_id: str, data: CampaignUpdate, caller: Caller
) -> Campaign:
    """Change the content of a draft; BadState once it is active or archived."""
    changes = {f: value for f in CONTENT_FIELDS if (value := getattr(data, f)) is not UNSET}
    if data.quiet_hours is not UNSET:
        check_quiet_hours(data.quiet_hours)
    async with conn.transaction():
        campaign = await visible_campaign(conn, campaign_id, caller, lock="update")
        if campaign["status"] != "draft":
            raise BadState(
                f"campaign is {campaign['status']}; only a draft can be changed",
                status=campaign["status"],
                allowed=["draft"],
            )
        if not changes:
            return campaign_of(campaign)
        content = {f: campaign[f] for f in CONTENT_FIELDS} | changes
        check_texts(content["channel"], content["subject"], content["body"], content["html_body"])
        record = await CampaignRepository(conn).update_content(campaign["id"], **content)
        await _audit(conn, caller, "campaign.updated", campaign, record)
    return campaign_of(record)


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
    conn: asyncpg.Connection, campaign_id: str, caller: Caller, *, to: str, allowed: list[str]
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
        if to == "active":
            if missing := missing_content(campaign):
                raise InvalidInput("campaign content is incomplete", missing)
            # A draft written before its texts were templates may not be one.
            check_texts(
                campaign["channel"], campaign["subject"], campaign["body"], campaign["html_body"]
            )
        record = await CampaignRepository(conn).set_status(campaign["id"], to)
        await _audit(conn, caller, STATUS_ACTIONS[to], campaign, record)
    return campaign_of(record)
