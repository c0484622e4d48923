"""What Twilio tells us after a send: delivery receipts (status callbacks) and the texts
recipients send back (STOP, START). Both come as signed forms (X-Twilio-Signature),
checked against the URL that PUBLIC_BASE_URL makes before anything else is done.

A recipient's number is patient data: nothing here logs it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import asyncpg

from app.core.signing import twilio_signature_matches
from app.domain.errors import NotSigned
from app.domain.recipients import channel_of, normalise
from app.domain.twilio import keyword, receipt
from app.services.feedback import apply_feedback
from db.campaigns import CampaignRepository
from db.deliveries import DeliveryRepository, delivery_id
from db.suppressions import SMS_STOP, SuppressionRepository

logger = logging.getLogger(__name__)

MAX_FORM_BYTES = 64 * 1024
"""Largest callback body: an inbound text of 1,600 characters, percent-encoded, with
Twilio's other fields is under 20 KiB."""
MAX_FORM_FIELDS = 200
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
"""What both routes answer: no reply text. Twilio itself confirms an opt-out or opt-in
(one confirmation at most: CTIA, FCC 24-24)."""
LOOKUP_AGAIN_AFTER = (0.5, 1.5)
"""Seconds to wait before looking an unknown MessageSid up again (2 s in all): a receipt
may come before the window that sent the message has recorded its sid (ADR 0057)."""


def verified_form(
    auth_token: str | None,
    public_base: str | None,
    raw_path: str,
    query_string: str,
    body: bytes,
    signature: str | None,
) -> dict[str, str]:
    """The form fields of a request that Twilio signed, else NotSigned (403). The URL is
    PUBLIC_BASE_URL + the request's path and query, as Twilio was configured to call it:
    the Host a proxy passes on cannot be trusted to be that."""
    if not auth_token or public_base is None or signature is None:
        raise NotSigned("an X-Twilio-Signature checked with TWILIO_AUTH_TOKEN is required")
    try:
        fields = parse_qsl(
            body.decode("ascii"),  # a form is percent-encoded: ASCII whatever it carries
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except ValueError:  # not ASCII, escapes that are not UTF-8, too many fields
        raise NotSigned("the body is not a form that Twilio signed") from None
    url = public_base + raw_path + (f"?{query_string}" if query_string else "")
    if not twilio_signature_matches(auth_token, url, fields, signature):
        raise NotSigned("the X-Twilio-Signature does not match the request")
    return dict(fields)


async def apply_status(
    pool: asyncpg.Pool, form: Mapping[str, str], pool_timeout_seconds: float
) -> None:
    """A status callback: `delivered`, `undelivered` and `failed` set the outcome of the
    delivery whose provider_message_id is the MessageSid (only ever upwards: a repeat
    changes nothing); other statuses, and sids of no delivery, are ignored."""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    reported = receipt(form.get("MessageStatus") or form.get("SmsStatus"), form.get("ErrorCode"))
    if not _storable(sid) or reported is None:
        return
    outcome, detail = reported
    occurred_at = datetime.now(UTC)  # Twilio's callbacks carry no time of their own
    for wait in (0.0, *LOOKUP_AGAIN_AFTER):
        await asyncio.sleep(wait)
        async with pool.acquire(timeout=pool_timeout_seconds) as conn:  # none held while waiting
            found = await DeliveryRepository(conn).find_by_provider_message_id(sid)
            if found is not None:
                await apply_feedback(
                    conn,
                    [(delivery_id(*found), outcome, occurred_at, detail)],
                    received=1,
                    ignored=0,
                    invalid={},
                    source="provider:twilio",
                )
                return
    logger.info("a Twilio status callback names no delivery", extra={"message_sid": sid})


async def apply_inbound(
    conn: asyncpg.Connection, form: Mapping[str, str], messaging_service_sid: str | None
) -> None:
    """An inbound text. An opt-out word (or OptOutType=STOP) suppresses the sender's
    number brand-wide for every brand that texts from the number it was sent to (or, sent
    to our Messaging Service, for every brand that texts); an opt-in word lifts those
    brands' opt-outs of the number (db/suppressions.py `opt_in`). Other texts change
    nothing."""
    asked = keyword(form.get("Body", ""), form.get("OptOutType"))
    sender, to = form.get("From", ""), form.get("To", "")
    if asked is None or channel_of(sender) != "sms" or not _storable(to):
        return  # `whatsapp:+1...`, or no number at all: none of ours
    address = normalise("sms", sender)
    service = form.get("MessagingServiceSid")
    through_service = bool(messaging_service_sid) and service == messaging_service_sid
    async with conn.transaction():
        brands = await CampaignRepository(conn).brands_texting_from(None if through_service else to)
        if not brands:
            return
        suppressions = SuppressionRepository(conn)
        if asked == "opt_out":
            changed = await suppressions.opt_out([(b, address) for b in brands], SMS_STOP)
        else:
            changed = await suppressions.opt_in(brands, address)
    logger.info(
        "an SMS %s", asked.replace("_", "-"), extra={"brands": len(brands), "changed": len(changed)}
    )


def _storable(value: str) -> bool:
    """Text a lookup may be given: PostgreSQL refuses NUL (and a sid or a number has none)."""
    return bool(value) and "\x00" not in value
