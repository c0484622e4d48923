"""Provider feedback: what happened to a message after it was handed over. Each event sets
its delivery's `outcome`; bounces and complaints also suppress the address for the brand.

Two formats are accepted: the webhook provider's own (`{"events": [...]}`, signed with
WEBHOOK_SECRET like the messages we send it) and SendGrid's Event Webhook (an array, signed
with ECDSA over a timestamp that must be within 10 minutes of now; its events name our
delivery by the `delivery_id` custom argument).

A body is judged as a whole (JSON, an array of at most 1,000 events), its events one by
one: an event that is not one of the format is skipped and reported (`invalid_events`),
never a 400 for the whole batch, which the provider would post again for ever, its good
events with it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

import asyncpg
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from app.domain.decoding import decode_json, validation_problem
from app.domain.recipients import normalise
from app.domain.schemas import MAX_PROVIDER_EVENTS, ProviderEvent, ProviderEventsResult
from db.outcomes import OUTCOME_RANK, OutcomeRepository, ReportedOutcome
from db.suppressions import NewSuppression, Source, SuppressionRepository

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 2 * 1024 * 1024
"""Largest feedback body: 1,000 of our events with 1,000-character details are ~1.2 MB;
SendGrid posts batches of at most 768 KB."""
SUPPRESSING = {"bounced", "complained"}


class BadSignature(Exception):
    """The request is not signed by whom it claims (HTTP 401)."""


EARLIEST_EVENT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_EVENT_AHEAD = timedelta(days=1)
"""An event's time is plausible from EARLIEST_EVENT to a day ahead of now (clocks differ);
outside, it is no event of a message this service sent, and is skipped."""


@dataclass
class ReceivedEvents:
    """A body of events, decoded event by event: the events of the format, and what is
    wrong with the others (JSON path -> problem)."""

    events: list[ProviderEvent]
    invalid: dict[str, str]

    @property
    def received(self) -> int:
        return len(self.events) + len(self.invalid)


class _WebhookBody(msgspec.Struct):
    events: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1, max_length=MAX_PROVIDER_EVENTS)]


# The webhook provider's format


def decode_webhook_events(content_type: str | None, body: bytes) -> ReceivedEvents:
    """The events of a webhook provider's body (ProviderEvents); InvalidInput (400) only
    if the body itself is not `{"events": [1 to 1,000 values]}`."""
    decoded = decode_json(content_type, body, _WebhookBody)
    received = ReceivedEvents([], {})
    for index, raw in enumerate(decoded.events):
        where = f"$.events[{index}]"
        try:
            event = _EVENT.decode(raw)
        except msgspec.ValidationError as exc:
            received.invalid.update([validation_problem(exc, where)])
            continue
        if not _plausible(event.occurred_at):
            received.invalid[f"{where}.occurred_at"] = IMPLAUSIBLE
            continue
        received.events.append(event)
    return received


async def webhook_feedback(
    conn: asyncpg.Connection, received: ReceivedEvents
) -> ProviderEventsResult:
    """Apply a verified body of the webhook provider."""
    reported = [
        (e.delivery_id, e.type, e.occurred_at.astimezone(UTC), e.detail) for e in received.events
    ]
    return await apply_feedback(
        conn,
        reported,
        received=received.received,
        ignored=0,
        invalid=received.invalid,
        source="provider:webhook",
    )


_EVENT = msgspec.json.Decoder(ProviderEvent)
IMPLAUSIBLE = "not a time of this message: before 1970, or more than a day ahead of now"


def _plausible(occurred_at: datetime) -> bool:
    # Compared as instants: no conversion that could overflow (year 9999 at -14:00).
    return EARLIEST_EVENT <= occurred_at <= datetime.now(UTC) + LATEST_EVENT_AHEAD


# SendGrid's Event Webhook


MAX_SENDGRID_EVENTS = 1000
"""Most events in one SendGrid body: SendGrid posts batches of at most 1,000."""
SENDGRID_TIMESTAMP_SKEW = timedelta(minutes=10)
"""How far a signed SendGrid timestamp may be from now: older is a replay (refused, 401)."""


class SendGridEvent(msgspec.Struct):
    """The fields we read of a SendGrid event; custom arguments arrive as top-level keys."""

    event: str
    timestamp: Annotated[float, msgspec.Meta(ge=0, le=253_402_300_799)]
    """Unix seconds, usually whole (at most the last second of 9999: a datetime holds it)."""
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


_SENDGRID_BODY = Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_SENDGRID_EVENTS)]
_SENDGRID_EVENT = msgspec.json.Decoder(SendGridEvent)


async def sendgrid_feedback(
    conn: asyncpg.Connection, content_type: str | None, body: bytes
) -> ProviderEventsResult:
    """Apply a verified SendGrid Event Webhook body: 400 unless it is an array of at most
    MAX_SENDGRID_EVENTS values; events of another shape are skipped and reported."""
    raw_events = decode_json(content_type, body, _SENDGRID_BODY)
    reported = []
    invalid: dict[str, str] = {}
    unmatched = 0
    for index, raw in enumerate(raw_events):
        try:
            event = _SENDGRID_EVENT.decode(raw)
        except msgspec.ValidationError as exc:
            invalid.update([validation_problem(exc, f"$[{index}]")])
            continue
        outcome = sendgrid_outcome(event)
        if outcome is None:
            continue
        if event.delivery_id is None:
            unmatched += 1
            continue
        occurred_at = datetime.fromtimestamp(event.timestamp, UTC)
        if not _plausible(occurred_at):
            invalid[f"$[{index}].timestamp"] = IMPLAUSIBLE
            continue
        detail = (event.reason or event.response or "")[:1000] or None
        reported.append((event.delivery_id, outcome, occurred_at, detail))
    if unmatched:
        logger.warning(
            "SendGrid events without a delivery_id custom argument",
            extra={"events": unmatched},
        )
    received = len(raw_events)
    return await apply_feedback(
        conn,
        reported,
        received=received,
        ignored=received - len(reported) - len(invalid),
        invalid=invalid,
        source="provider:sendgrid",
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


def check_sendgrid_timestamp(timestamp: str | None) -> None:
    """BadSignature unless `timestamp` (Unix seconds, as signed) is within
    SENDGRID_TIMESTAMP_SKEW of now: a body signed long ago is a replay."""
    try:
        skew = abs(time.time() - int(timestamp or ""))
    except ValueError:  # absent, not a whole number, or thousands of digits long
        raise BadSignature("a SendGrid timestamp (Unix seconds) is required") from None
    if skew > SENDGRID_TIMESTAMP_SKEW.total_seconds():
        raise BadSignature(
            "the SendGrid timestamp is more than 10 minutes from now: a replay, or a clock off"
        )


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey | None, body: bytes, signature: str | None, timestamp: str | None
) -> None:
    """SendGrid signs timestamp + raw body with ECDSA P-256 / SHA-256 (base64 DER); the
    timestamp must be fresh (check_sendgrid_timestamp)."""
    if key is None or not signature or not timestamp:
        raise BadSignature("a SendGrid signature and timestamp are required")
    check_sendgrid_timestamp(timestamp)
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
    invalid: dict[str, str],
    source: Source,
) -> ProviderEventsResult:
    """Set the outcomes of (delivery_id, outcome, occurred_at, detail) and suppress the
    addresses that bounced or complained (their suppressions' `source`: the provider), in
    one transaction; unknown ids are reported."""
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
            NewSuppression(
                row["brand_id"], normalise(row["channel"], row["recipient"]), row["outcome"]
            )
            for row in changed
            if row["outcome"] in SUPPRESSING
        ]
        # Brand-wide: a dead or complaining mailbox is so for every topic.
        await SuppressionRepository(conn).add(suppressions, source)
    found = {(row["run_id"], row["position"]) for row in rows}
    unknown.update((named[key], None) for key in strongest if key not in found)
    return ProviderEventsResult(
        received=received,
        applied=len(changed),
        ignored=ignored,
        unknown_delivery_ids=list(unknown),
        invalid_events=invalid,
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
