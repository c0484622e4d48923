"""What Twilio tells us after a send: delivery receipts (status callbacks) and the texts
recipients send back (STOP, START). Both come as signed forms (X-Twilio-Signature),
checked against the URL that PUBLIC_BASE_URL makes before anything else is done.

A recipient's number is patient data: nothing here logs it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime

import asyncpg
from yarl import URL

from app.core.signing import twilio_signature_matches
from app.domain.errors import NotSigned
from app.domain.recipients import channel_of, normalise
from app.domain.twilio import keyword, receipt
from app.services.feedback import apply_feedback
from db.campaigns import CampaignRepository
from db.deliveries import delivery_id
from db.receipts import ReceiptRepository
from db.suppressions import SMS_STOP, SuppressionRepository

logger = logging.getLogger(__name__)

MAX_FORM_BYTES = 32 * 1024
"""Largest callback body. An inbound text of 1,600 characters percent-encoded (9 bytes a
character at most) with Twilio's other fields and 10 media URLs is under 18 KiB; and each
byte more is percent-decoding on the event loop for anyone who posts junk."""
MAX_FORM_FIELDS = 100
"""Twilio's inbound texts carry about 45 fields (with 10 media); more is not Twilio."""
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
"""What both routes answer: no reply text. Twilio itself confirms an opt-out or opt-in
(one confirmation at most: CTIA, FCC 24-24)."""
LOOKUP_AGAIN_AFTER = (0.5, 1.5)
"""Seconds to wait before looking a MessageSid not awaited up again (2 s in all): a receipt
may come before the window that sent the message has recorded its sid (ADR 0063)."""


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
    fields = form_fields(body)
    url = public_base + raw_path + (f"?{query_string}" if query_string else "")
    if not twilio_signature_matches(auth_token, url, fields, signature):
        raise NotSigned("the X-Twilio-Signature does not match the request")
    return dict(fields)


def form_fields(body: bytes) -> list[tuple[str, str]]:
    """The fields of a form body, decoded as urllib.parse.parse_qsl(keep_blank_values=True)
    decodes them, by yarl's C unquoter: 17 times faster on a body of escapes (0.34 ms
    against 5.9 ms for 32 KiB), which anyone may post for the event loop to decode
    (ADR 0054). NotSigned if it cannot be a form: not ASCII (a form is percent-encoded),
    a `#` (Twilio encodes it; yarl would cut the rest off), too many fields."""
    if not body.isascii() or b"#" in body or body.count(b"&") >= MAX_FORM_FIELDS:
        raise NotSigned("the body is not a form that Twilio signed")
    return list(URL.build(query_string=body.decode("ascii"), encoded=True).query.items())


async def apply_status(
    pool: asyncpg.Pool, form: Mapping[str, str], pool_timeout_seconds: float
) -> None:
    """A status callback: `delivered`, `undelivered` and `failed` (final statuses) set the
    outcome of the delivery sent as the MessageSid, which is then no longer awaited
    (db/receipts.py): a repeat changes nothing. Other statuses, and sids not awaited, are
    ignored."""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    reported = receipt(form.get("MessageStatus") or form.get("SmsStatus"), form.get("ErrorCode"))
    if not _storable(sid) or reported is None:
        return
    outcome, detail = reported
    occurred_at = datetime.now(UTC)  # Twilio's callbacks carry no time of their own
    for wait in (0.0, *LOOKUP_AGAIN_AFTER):
        await asyncio.sleep(wait)  # no connection held meanwhile
        async with pool.acquire(timeout=pool_timeout_seconds) as conn, conn.transaction():
            found = await ReceiptRepository(conn).take(sid)
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
