"""Provider feedback: what happened to a message after it was handed over. Each event sets
its delivery's `outcome`; bounces and complaints also suppress the address for the brand.

Two formats are accepted: the webhook provider's own (`{"events": [...]}`, signed with
WEBHOOK_SECRET like the messages we send it) and SendGrid's Event Webhook (an array, signed
with ECDSA; its events name our delivery by the `delivery_id` custom argument).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

import asyncpg
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from app.body import decode_json
from app.recipients import normalise
from app.schemas import ProviderEvents, ProviderEventsResult
from db.outcomes import OUTCOME_RANK, OutcomeRepository, ReportedOutcome
from db.suppressions import SuppressionRepository

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 2 * 1024 * 1024
"""Largest feedback body: 1,000 of our events with 1,000-character details are ~1.2 MB;
SendGrid posts batches of at most 768 KB."""
SUPPRESSING = {"bounced", "complained"}


class BadSignature(Exception):
    """The request is not signed by whom it claims (HTTP 401)."""


# The webhook provider's format


async def webhook_feedback(conn: asyncpg.Connection, body: ProviderEvents) -> ProviderEventsResult:
    """Apply a verified body of the webhook provider."""
    events = body.events
    reported = [(e.delivery_id, e.type, e.occurred_at, e.detail) for e in events]
    return await apply_feedback(conn, reported, received=len(events), ignored=0)


# SendGrid's Event Webhook


class SendGridEvent(msgspec.Struct):
    """The fields we read of a SendGrid event; custom arguments arrive as top-level keys."""

    event: str
    timestamp: Annotated[int, msgspec.Meta(ge=0, le=253_402_300_799)]
    """Unix seconds (at most the last second of 9999: a datetime can hold it)."""
    delivery_id: str | None = None
    type: str | None = None
    """Of a `bounce`: "bounce" (the address is dead) or "blocked" (refused for now)."""
    reason: str | None = None
    response: str | None = None


def sendgrid_outcome(event: SendGridEvent) -> str | None:
    """Our outcome for a SendGrid event; None for those that carry none (processed,
    deferred, open, click, ... and blocked bounces, which are temporary)."""
    if event.event == "delivered":
        return "delivered"
    if event.event == "bounce" and event.type != "blocked":
        return "bounced"
    if event.event == "spamreport":
        return "complained"
    return None


async def sendgrid_feedback(
    conn: asyncpg.Connection, content_type: str | None, body: bytes
) -> ProviderEventsResult:
    """Apply a verified SendGrid Event Webhook body (400 if malformed)."""
    events = decode_json(content_type, body, list[SendGridEvent])
    reported = []
    unmatched = 0
    for event in events:
        outcome = sendgrid_outcome(event)
        if outcome is None:
            continue
        if event.delivery_id is None:
            unmatched += 1
            continue
        occurred_at = datetime.fromtimestamp(event.timestamp, UTC)
        detail = (event.reason or event.response or "")[:1000] or None
        reported.append((event.delivery_id, outcome, occurred_at, detail))
    if unmatched:
        logger.warning(
            "SendGrid events without a delivery_id custom argument",
            extra={"events": unmatched},
        )
    return await apply_feedback(
        conn, reported, received=len(events), ignored=len(events) - len(reported)
    )


def load_sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 of DER), or PEM."""
    data = text.strip().encode()
    key = (
        load_pem_public_key(data)
        if data.startswith(b"-----")
        else load_der_public_key(base64.b64decode(data, validate=True))
    )
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("SENDGRID_WEBHOOK_PUBLIC_KEY must be an EC (P-256) public key")
    return key


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey | None, body: bytes, signature: str | None, timestamp: str | None
) -> None:
    """SendGrid signs timestamp + raw body with ECDSA P-256 / SHA-256 (base64 DER)."""
    if key is None or not signature or not timestamp:
        raise BadSignature("a SendGrid signature and timestamp are required")
    try:
        key.verify(
            base64.b64decode(signature, validate=True),
            timestamp.encode() + body,
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, binascii.Error, ValueError):
        raise BadSignature("the SendGrid signature does not match the body") from None


# Both


async def apply_feedback(
    conn: asyncpg.Connection,
    reported: Iterable[tuple[str, str, datetime, str | None]],
    *,
    received: int,
    ignored: int,
) -> ProviderEventsResult:
    """Set the outcomes of (delivery_id, outcome, occurred_at, detail) and suppress the
    addresses that bounced or complained, in one transaction; unknown ids are reported."""
    unknown: dict[str, None] = {}  # ordered, without repeats
    strongest: dict[tuple[UUID, int], ReportedOutcome] = {}
    named: dict[tuple[UUID, int], str] = {}  # as the provider wrote the id
    for delivery_id, outcome, occurred_at, detail in reported:
        key = parse_delivery_id(delivery_id)
        if key is None:
            unknown[delivery_id] = None
            continue
        named.setdefault(key, delivery_id)
        # Several events of one delivery in a body: the strongest one counts.
        if key not in strongest or _rank(outcome) > _rank(strongest[key].outcome):
            strongest[key] = ReportedOutcome(*key, outcome, occurred_at, detail)
    reports = list(strongest.values())
    async with conn.transaction():
        rows = await OutcomeRepository(conn).apply(reports) if reports else []
        changed = [row for row in rows if row["changed"]]
        suppressions = [
            (row["brand_id"], normalise(row["channel"], row["recipient"]), row["outcome"])
            for row in changed
            if row["outcome"] in SUPPRESSING
        ]
        if suppressions:
            await SuppressionRepository(conn).add_missing(suppressions)
    found = {(row["run_id"], row["position"]) for row in rows}
    unknown.update((named[key], None) for key in strongest if key not in found)
    return ProviderEventsResult(
        received=received, applied=len(changed), ignored=ignored, unknown_delivery_ids=list(unknown)
    )


def parse_delivery_id(delivery_id: str) -> tuple[UUID, int] | None:
    """(run_id, position) of `{run_id}:{position}`; None if it cannot be one of ours."""
    run_id, _, position = delivery_id.rpartition(":")
    try:
        key = UUID(run_id), int(position)
    except ValueError:
        return None
    return key if position.isascii() and position.isdigit() and key[1] < 2**31 else None


def _rank(outcome: str) -> int:
    return OUTCOME_RANK.index(outcome)
