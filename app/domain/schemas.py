"""Request and response bodies. Inputs declare their limits; outputs are what we send."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

Channel = Literal["email", "sms"]
CampaignStatus = Literal["draft", "active", "archived"]
RunStatus = Literal["scheduled", "queued", "running", "completed", "cancelled"]
DeliveryStatus = Literal["pending", "sent", "failed", "skipped"]
SuppressionReason = Literal["unsubscribed", "bounced", "complained", "manual"]
Outcome = Literal["delivered", "undelivered", "bounced", "complained"]
"""What a provider reported after the send; `undelivered` comes from SMS receipts (Twilio)."""
ReportedType = Literal["delivered", "bounced", "complained"]
"""What the webhook provider may report (POST /v1/messaging/providers/webhook/events)."""
AuditAction = Literal[
    "campaign.created",
    "campaign.updated",
    "campaign.activated",
    "campaign.archived",
    "run.published",
    "run.cancelled",
    "suppression.created",
    "suppression.deleted",
    "rate_limit.updated",
]
AuditTargetType = Literal["campaign", "run", "suppression", "rate_limit"]
Priority = Literal["high", "normal", "low"]
"""Deliveries of a higher priority go before those of a lower one (db/queue.py)."""

BRAND_ID_LENGTH = (1, 100)
BRAND_ID_PATTERN = r"^(?:[^*\x00]|\*[^\x00])[^\x00]*$"
"""Anything but the literal `*` (in a token's `brands`, every brand) and NUL (which
PostgreSQL cannot store)."""
ADDRESS_LENGTH = (1, 320)

PersonId = Annotated[str, Meta(min_length=1, max_length=256)]
Address = Annotated[str, Meta(min_length=ADDRESS_LENGTH[0], max_length=ADDRESS_LENGTH[1])]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
BrandId = Annotated[
    str,
    Meta(
        min_length=BRAND_ID_LENGTH[0],
        max_length=BRAND_ID_LENGTH[1],
        pattern=BRAND_ID_PATTERN,
        description="1 to 100 characters; not `*`, no NUL.",
    ),
]
Subject = Annotated[str, Meta(min_length=1, max_length=998)]
TOPIC_PATTERN = "^[a-z0-9_-]{1,64}$"
Topic = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=TOPIC_PATTERN,
        description="1 to 64 characters of `a-z`, `0-9`, `_` and `-`.",
    ),
]
MessageBody = Annotated[str, Meta(min_length=1, max_length=100_000)]


class Error(msgspec.Struct, omit_defaults=True):
    """The body of every non-2xx response."""

    error: str
    message: str
    details: dict[str, Any] = {}


TimeZoneName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        description="An IANA time zone name, e.g. `America/New_York`.",
    ),
]
ClockTime = Annotated[
    str,
    Meta(pattern=r"^(?:[01][0-9]|2[0-3]):[0-5][0-9]$", description="`HH:MM`, 00:00 to 23:59."),
]


if TYPE_CHECKING:
    RawJson = msgspec.Raw | None
else:
    RawJson = msgspec.Raw
    """msgspec decodes no union with Raw: a field of this type is None when absent."""


class Recipient(msgspec.Struct, gc=False, omit_defaults=True):
    """gc=False: a publish holds up to 100,000 of these, and they never form cycles;
    untracked, they do not set off the garbage collector over and over. omit_defaults:
    a recipient without `time_zone` encodes (Idempotency-Key fingerprint) as before."""

    person_id: PersonId
    recipient: Address
    time_zone: TimeZoneName | None = None
    """The recipient's own zone for the campaign's quiet hours (over the campaign's)."""
    data: RawJson = None
    """The recipient's variables (`data.<name>` in the campaign's templates): a JSON
    object of at most PUBLISH_MAX_DATA_BYTES, patient data, never returned. Kept as the
    JSON text it came as (no Python objects for 100,000 of them), checked by
    app/domain/recipient_data.py. None when absent; an explicit `null` arrives as the
    text `null` and counts as absent."""


class PublishRequest(msgspec.Struct, omit_defaults=True):
    recipients: list[Recipient]
    send_at: Annotated[datetime, Meta(tz=True)] | None = None
    """When delivery starts (RFC 3339 with an offset); the run is `scheduled` until then.
    At most 5 minutes in the past and 90 days ahead."""


class QuietHours(msgspec.Struct, forbid_unknown_fields=True):
    """No message of the campaign reaches a recipient whose local time is in
    [start, end); the window may cross midnight (22:00 to 07:00). `start` and `end`
    differ (the same time twice is a 400), and `time_zone` is a zone of the IANA
    database (an unknown one is a 400)."""

    start: ClockTime
    end: ClockTime
    time_zone: TimeZoneName
    """The recipients' zone, unless a recipient carries its own."""


class CampaignCreate(msgspec.Struct):
    """`subject`, `body` and `html_body` are Liquid templates (app/domain/templates.py):
    one that does not parse is a 400 naming the field and the line."""

    brand_id: BrandId
    name: Name
    channel: Channel
    body: MessageBody
    subject: Subject | None = None
    html_body: MessageBody | None = None
    """The HTML part of an e-mail (autoescaped); e-mail campaigns only."""
    sender: Address | None = None
    priority: Priority = "normal"
    quiet_hours: QuietHours | None = None
    topic: Topic | None = None
    """Subscription mail (a newsletter) of this topic: every e-mail carries an unsubscribe
    link, and the recipients who used it, or are suppressed for the topic, are skipped.
    None: service mail (a care reminder), which only brand-wide suppressions stop."""


class CampaignUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """PATCH of a draft, merge-patch style: an absent field stays as it is, `null`
    clears `sender` or `subject`. Brand and status are not content: naming them is a 400."""

    name: Name | UnsetType = UNSET
    channel: Channel | UnsetType = UNSET
    body: MessageBody | UnsetType = UNSET
    subject: Subject | UnsetType | None = UNSET
    html_body: MessageBody | UnsetType | None = UNSET
    sender: Address | UnsetType | None = UNSET
    priority: Priority | UnsetType = UNSET
    quiet_hours: QuietHours | UnsetType | None = UNSET
    topic: Topic | UnsetType | None = UNSET


class CampaignWarning(msgspec.Struct):
    """Something the campaign may be sent with, but should not be."""

    code: str
    """`no_unsubscribe_url`, `unsubscribe_url_without_topic`."""
    message: str


class Campaign(msgspec.Struct):
    id: UUID
    brand_id: str
    name: str
    channel: Channel
    status: CampaignStatus
    sender: str | None
    subject: str | None
    body: str
    created_by: str
    created_at: datetime
    updated_at: datetime
    priority: Priority
    quiet_hours: QuietHours | None
    """Null: messages may go at any hour."""
    topic: str | None
    """Null: service mail."""
    warnings: list[CampaignWarning]
    """What the campaign's content lacks for its kind of mail (an e-mail with a topic and
    no `{{ unsubscribe_url }}` in its body): allowed, and said at every answer."""
    html_body: str | None
    """The HTML part of an e-mail campaign's messages (a Liquid template); null: text only."""


class PreviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One recipient, as a publish would carry it."""

    person_id: PersonId
    recipient: Address
    data: dict[str, Any] | None = None
    """At most PUBLISH_MAX_DATA_BYTES as JSON."""


class Preview(msgspec.Struct):
    """The campaign's message as that recipient would receive it."""

    subject: str | None
    body: str
    html_body: str | None
    sms_segments: int | None
    """The parts a carrier splits the SMS into (GSM-7: 160 characters, 153 a part when
    split; otherwise UCS-2: 70, 67 a part); null for e-mail."""


class Run(msgspec.Struct):
    id: UUID
    campaign_id: UUID
    brand_id: str
    status: RunStatus
    total_recipients: int
    sent_count: int
    failed_count: int
    skipped_count: int
    started_at: datetime | None
    completed_at: datetime | None
    created_by: str
    created_at: datetime
    retry_of: UUID | None
    """The run whose failed deliveries this run retries (POST .../retry); null otherwise."""
    scheduled_for: datetime | None
    """The `send_at` of a scheduled publish; null when delivery started at publish."""


class CampaignPage(msgspec.Struct):
    items: list[Campaign]
    next_cursor: str | None
    """Pass as `cursor` for the next page; null on the last page."""


class RunPage(msgspec.Struct):
    items: list[Run]
    next_cursor: str | None


class Delivery(msgspec.Struct):
    id: str
    """`{run_id}:{position}`: the delivery_id that providers receive."""
    person_id: str
    recipient: str
    status: DeliveryStatus
    reason: str | None
    """Why it was skipped or failed: duplicate, invalid_recipient, suppressed, cancelled, ..."""
    attempts: int
    last_error: str | None
    provider_message_id: str | None
    sent_at: datetime | None
    outcome: Outcome | None
    """What the provider reported after the send (its events webhook, or Twilio's status
    callback: `undelivered`); null until then."""
    outcome_at: datetime | None
    outcome_detail: str | None
    not_before: datetime | None
    """A pending delivery waiting for its recipient's quiet hours to end: when it goes."""


class DeliveryPage(msgspec.Struct):
    items: list[Delivery]
    next_cursor: str | None


class SuppressionPut(msgspec.Struct, forbid_unknown_fields=True):
    reason: SuppressionReason


class Suppression(msgspec.Struct):
    brand_id: str
    recipient: str
    """The address as compared at publish: e-mail addresses lower-cased."""
    reason: SuppressionReason
    created_at: datetime
    topic: str | None
    """Null: brand-wide, every campaign of the brand; else only campaigns of that topic."""


class SuppressionPage(msgspec.Struct):
    items: list[Suppression]
    next_cursor: str | None


class AuditRecord(msgspec.Struct):
    """One change, recorded in the transaction that made it."""

    id: UUID
    occurred_at: datetime
    brand_id: str
    actor: str
    """The token's `sub`; `provider:webhook`, `provider:sendgrid` or `provider:twilio`;
    `recipient` (a one-click unsubscribe, an SMS STOP or START)."""
    action: AuditAction
    target_type: AuditTargetType
    target_id: str
    """The campaign's or run's id, the suppression's address, the brand's id (rate limit)."""
    request_id: str | None
    """The X-Request-ID of the request that made the change; null for the worker's."""
    changes: dict[str, Any]
    """`{field: {"old": ..., "new": ...}}`; a message's subject and bodies only as
    `{"changed": true}`. A suppression's also hold its `topic` (null: brand-wide)."""


class AuditPage(msgspec.Struct):
    items: list[AuditRecord]
    next_cursor: str | None


MAX_PROVIDER_EVENTS = 1000


class ProviderEvent(msgspec.Struct):
    delivery_id: Annotated[str, Meta(min_length=1, max_length=100)]
    """The `delivery_id` of the webhook message (`{run_id}:{position}`)."""
    type: ReportedType
    occurred_at: Annotated[datetime, Meta(tz=True)]
    detail: Annotated[str, Meta(max_length=1000)] | None = None


class ProviderEvents(msgspec.Struct):
    """What the webhook provider reports about the messages it was given."""

    events: Annotated[list[ProviderEvent], Meta(min_length=1, max_length=MAX_PROVIDER_EVENTS)]


class ProviderEventsResult(msgspec.Struct):
    received: int
    applied: int
    """Deliveries whose outcome changed (a replay, or news older than the outcome, changes none)."""
    ignored: int
    """Events that carry no outcome of ours (SendGrid's opens, clicks, deferrals...)."""
    unknown_delivery_ids: list[str]
    """Delivery ids of events that match no delivery; the other events still applied."""
    invalid_events: dict[str, str] = {}
    """Events skipped because they are not events of the format (a field missing or of
    another type, an `occurred_at` before 1970 or more than a day ahead): the JSON path of
    what is wrong -> what. The other events still applied; sending these again changes
    nothing."""


MIN_PER_SECOND = 0.01
"""The smallest rate limit: one message every 100 s. Smaller ones (5e-324) make no sense
and broke the worker's token bucket (an underflow, a wait beyond any date)."""
MAX_PER_SECOND = 1_000_000.0
PerSecond = Annotated[
    float,
    Meta(
        ge=MIN_PER_SECOND,
        le=MAX_PER_SECOND,
        description=f"Messages per second, {MIN_PER_SECOND} to {MAX_PER_SECOND:,.0f}.",
    ),
]


class RateLimit(msgspec.Struct, forbid_unknown_fields=True):
    """A brand's own caps, within EMAIL_RATE_LIMIT / SMS_RATE_LIMIT; `null`: no cap of its
    own on that channel."""

    email_per_second: PerSecond | None
    sms_per_second: PerSecond | None


class Health(msgspec.Struct):
    status: str
