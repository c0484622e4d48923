"""A campaign's message rendered for one recipient, as the worker would render it: the
way to find a wrong variable path before a publish, with a real recipient's data."""

from __future__ import annotations

import asyncio

import asyncpg

from app.core.unsubscribe import UnsubscribeKeys
from app.domain.access import Caller
from app.domain.errors import InvalidInput
from app.domain.recipient_data import check_preview_data
from app.domain.recipients import normalise
from app.domain.schemas import Preview, PreviewRequest
from app.domain.templates import (
    CampaignTemplates,
    RenderFailed,
    TemplateError,
    body_limit,
    sms_segments,
)
from app.services.campaigns import visible_campaign

PREVIEW_RENDERS = 2
"""Previews a web process renders at once, each in a thread: about a core each at the
bounds of a render (ADR 0067); more would only share the cores and hold their threads."""


async def preview_message(
    pool: asyncpg.Pool,
    campaign_id: str,
    recipient: PreviewRequest,
    caller: Caller,
    *,
    pool_timeout: float,
    renders: asyncio.Semaphore,
    max_data_bytes: int,
    unsubscribe: UnsubscribeKeys | None,
) -> Preview:
    """The campaign (in any status) rendered for `recipient`. InvalidInput naming
    `$.data.<path>` for a variable the data lacks, or the template and the variable or
    bound for a render that fails; never a value of the data. The database connection
    is given back before the render; at most `renders` renders run at once."""
    async with pool.acquire(timeout=pool_timeout) as conn:
        campaign = await visible_campaign(conn, campaign_id, caller)
    data = recipient.data
    check_preview_data(data, max_data_bytes)
    try:
        templates = CampaignTemplates.compile(
            campaign["subject"], campaign["body"], campaign["html_body"]
        )
    except TemplateError as exc:  # a text stored before texts were templates
        raise InvalidInput(
            f"the campaign's {exc.field} is not a valid template",
            {f"campaign.{exc.field}": f"line {exc.line}: {exc.problem}"},
        ) from None
    if (path := templates.missing(data)) is not None:
        raise InvalidInput(
            "the data lacks a variable that the campaign's templates need",
            {f"$.data.{'.'.join(path)}": "missing: the templates read it without a default"},
        )
    link = None
    if campaign["topic"] is not None and unsubscribe is not None:  # as the worker links it
        address = normalise(campaign["channel"], recipient.recipient)
        link = unsubscribe.preview_url(
            brand_id=campaign["brand_id"], topic=campaign["topic"], address=address
        )
    try:
        # In a thread: a render may take a second of CPU at its bounds (ADR 0067), and the
        # event loop takes the GIL back every switch interval (5 ms) meanwhile. A thread
        # cannot be stopped: a preview whose client has gone still renders to its end, so
        # only so many run at once, and one waiting for its turn is simply dropped.
        async with renders:
            rendered = await asyncio.to_thread(
                templates.render,
                person_id=recipient.person_id,
                recipient=recipient.recipient,
                data=data,
                campaign_name=campaign["name"],
                unsubscribe_url=link,
                max_characters=body_limit(campaign["channel"]),
            )
    except RenderFailed as exc:
        raise InvalidInput(
            "the campaign's message cannot be rendered with this data", {"$.data": str(exc)}
        ) from None
    segments = sms_segments(rendered.body) if campaign["channel"] == "sms" else None
    return Preview(rendered.subject, rendered.body, rendered.html_body, segments)
