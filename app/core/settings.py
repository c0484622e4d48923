"""The service's configuration, read once from the environment (12-factor).

Each field of `Settings` is the upper-cased variable of its name (MESSAGING_DEV_MODE for
`dev_mode`), parsed by msgspec: its type and `Meta` constraints say what is allowed, and an
error names the variable. `python -m app.core.settings` prints the README's table of
them.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import os
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from app.domain.schemas import MAX_PER_SECOND, MIN_PER_SECOND

# Used only when MESSAGING_DEV_MODE is on and no key is configured; never in production.
DEV_JWT_SECRET = "messaging-development-secret-not-for-production"
DEV_UNSUBSCRIBE_SECRET = "messaging-development-unsubscribe-key-not-for-production"
MIN_UNSUBSCRIBE_SECRET = 16

Positive = Annotated[int, Meta(ge=1)]
Seconds = Annotated[float, Meta(gt=0, le=366 * 86400)]
"""A duration: more than 0, at most a year (NaN and infinity are refused too)."""
Rate = Annotated[float, Meta(ge=MIN_PER_SECOND, le=MAX_PER_SECOND)]
"""Messages per second, within the bounds of a brand's own cap."""
Port = Annotated[int, Meta(ge=0, le=65535)]

_RENAMED = {"dev_mode": "MESSAGING_DEV_MODE"}
_COMPUTED = {"tracing"}
"""Fields no variable of their own sets."""


class SettingsError(Exception):
    """The environment does not describe a runnable service."""


def variable(field: str) -> str:
    """The environment variable of a Settings field."""
    return _RENAMED.get(field, field.upper())


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@localhost:5432/messaging"
    """PostgreSQL DSN used by web, worker and alembic."""
    port: Port = 8000
    """Port the web process listens on."""
    jwt_secret: str | None = None
    """HS256 key that verifies bearer tokens."""
    jwt_public_key: str | None = None
    """PEM public key (RSA or EC) that verifies RS256/ES256 tokens instead of a shared secret."""
    jwt_jwks_url: str | None = None
    """URL of an identity provider's JWKS document: RS256/ES256 tokens are verified with
    the key their `kid` names, instead of JWT_SECRET / JWT_PUBLIC_KEY (not allowed with it)."""
    jwt_jwks_refetch_seconds: Seconds = 10.0
    """Fetches of the JWKS are at least this far apart, whatever unknown `kid`s arrive."""
    jwt_jwks_max_age_seconds: Seconds = 300.0
    """Keys fetched longer ago are refetched in the background on the next request (so a key
    the provider withdrew stops working); requests go on with the keys in hand meanwhile."""
    jwt_jwks_timeout_seconds: Seconds = 2.0
    """The longest a fetch of the JWKS may take; only requests with an unknown `kid` wait."""
    jwt_issuer: str | None = None
    """When set, tokens must carry this `iss`."""
    jwt_audience: str | None = None
    """When set, tokens must carry this `aud`."""
    cursor_secret: str | None = None
    """The secret that pagination cursors are encrypted with (AES-256-GCM,
    app/services/pagination.py). Default: JWT_SECRET, so that every web process of a
    deployment accepts the others' cursors. Required with JWT_PUBLIC_KEY or JWT_JWKS_URL
    (a public key is no secret)."""
    metrics_port: Port | None = None
    """Port of the web process's Prometheus endpoint (`/metrics`), apart from PORT: set,
    `/metrics` is served there only, and a deployment exposes PORT alone to the public.
    Unset or 0: `/metrics` is on PORT, beside the API."""
    metrics_refresh_seconds: Seconds = 5.0
    """How often the web process reads the queue figures of `/metrics` (ops_queue_depth)
    from the database; a scrape never does."""
    metrics_cache_seconds: Annotated[float, Meta(ge=0, le=3600)] = 1.0
    """A scrape of `/metrics` on PORT within this long of the last one gets the same text:
    however often anyone asks, it is rendered at most once in that time. 0: every time."""
    dev_mode: bool = False
    """`1`: the web process may start without a JWT key, verifying with a fixed, public
    development secret; it says so loudly at start. Never in production."""
    email_provider: Literal["log", "smtp", "webhook"] = "log"
    """Who sends e-mail: the worker's log (development), an SMTP relay, or WEBHOOK_URL."""
    sms_provider: Literal["log", "webhook", "twilio"] = "log"
    """Who sends SMS: the worker's log (development), WEBHOOK_URL, or Twilio's Messages API
    (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and PUBLIC_BASE_URL)."""
    smtp_url: str | None = None
    """smtp://user:password@host:port, or smtps:// for implicit TLS."""
    smtp_starttls: Literal["auto", "always", "never"] = "auto"
    """STARTTLS when the server offers it (auto), always required, or never used."""
    webhook_url: str | None = None
    """Where the webhook provider POSTs each message."""
    webhook_secret: str | None = None
    """HMAC-SHA256 key that signs each webhook body (X-Signature)."""
    events_webhook_url: str | None = None
    """Where events (run.started, run.completed, run.cancelled, suppression.created) are
    POSTed. Unset: events are still recorded (table events) but never sent."""
    events_webhook_secret: str | None = None
    """HMAC-SHA256 key that signs each event body (X-Signature); required with the URL."""
    events_retry_hours: Annotated[int, Meta(ge=24)] = 72
    """How long an event is retried while the receiver fails (the contract asks >= 24 h)."""
    events_retry_base_seconds: Seconds = 5.0
    """Backoff of a failed event POST: base * 2^attempts, +-50% jitter, at most 1 h."""
    sendgrid_webhook_public_key: str | None = None
    """The verification key of SendGrid's signed Event Webhook (base64 DER, as SendGrid shows
    it, or PEM): POST /v1/messaging/providers/sendgrid/events is refused (401) without it."""
    public_base_url: str | None = None
    """The service's public origin (`https://messaging.example.com`, or with a path prefix
    the proxy strips): links and callbacks are made of it, such as Twilio's StatusCallback,
    and Twilio's signatures are checked against it."""
    unsubscribe_secrets: str | None = None
    """Comma-separated keys of the unsubscribe links' tokens (AES-GCM-SIV, each at least 16
    characters): the first makes new tokens, every one listed still opens those it made
    (rotation: put the new key first, drop the old one a token lifetime, 2 years, later).
    Needs PUBLIC_BASE_URL. Unset: e-mail of a campaign with a topic fails unsent, for want
    of the List-Unsubscribe link it must carry; MESSAGING_DEV_MODE=1 uses a public
    development key and http://localhost:PORT."""
    unsubscribe_mailto: str | None = None
    """An address that also takes unsubscribe requests by e-mail: List-Unsubscribe then
    offers `mailto:` it, with the link's token as subject, besides the HTTPS link."""
    twilio_account_sid: str | None = None
    """The Twilio account that sends SMS (`AC...`), with SMS_PROVIDER=twilio."""
    twilio_auth_token: str | None = None
    """The account's auth token: the Messages API's password, and the key that Twilio signs
    its status callbacks and inbound messages with (X-Twilio-Signature); without it those
    routes answer 403."""
    twilio_messaging_service_sid: str | None = None
    """A Messaging Service (`MG...`) that every SMS is sent through (its number pool and
    opt-out handling); unset: each campaign's `sender` is the `From` number."""
    twilio_api_url: str = "https://api.twilio.com"
    """Origin of Twilio's REST API (another for a compatible API, or a local stand-in)."""
    twilio_max_connections: Positive = 8
    """Connections one worker process keeps to TWILIO_API_URL; a send waits for a free one
    without spending its timeout or an attempt (as WEBHOOK_MAX_CONNECTIONS)."""
    twilio_timeout_seconds: Seconds = 10.0
    """How long one send to Twilio may hold its connection before it counts as a transient
    failure."""
    webhook_max_connections: Positive = 8
    """Connections one worker process keeps to WEBHOOK_URL; a send waits for a free one, and
    that wait costs neither time of its timeout nor an attempt. 2 to 32 measured alike
    against a fast local receiver (docs/performance.md); raise it for a slow receiver."""
    webhook_timeout_seconds: Seconds = 10.0
    """How long one webhook send may hold its connection (connect, request, the answer read)
    before it counts as a transient failure."""
    delivery_batch_size: Positive = 500
    """Deliveries per procrastinate job."""
    delivery_max_attempts: Positive = 5
    """Attempts before a transient failure becomes `failed`."""
    delivery_max_throttles: Positive = 10
    """Throttled answers (429) after which a delivery is `failed` with reason `throttled`;
    they spend no attempt before that. Each waits at least 1 s and at most 1 h."""
    worker_concurrency: Positive = 32
    """Sends in flight per worker process."""
    worker_jobs: Positive = 4
    """deliver_batch jobs one worker process runs side by side (they share the sends)."""
    delivery_retry_base_seconds: Seconds = 2.0
    """Backoff of a transient failure: base * 2^(attempts-1), with +-50% jitter, max 300 s."""
    stalled_job_seconds: Positive = 30
    """A job whose worker sent no heartbeat for this long is requeued (worker crashed)."""
    worker_metrics_port: Port | None = None
    """Port of the worker's Prometheus endpoint (`/metrics`); unset or 0: none. One port per
    worker process: several workers on one host need one each."""
    job_retention_hours: Positive = 168
    """Succeeded procrastinate jobs (and their events) older than this are deleted hourly."""
    delivery_retention_days: Positive | None = None
    """Deliveries of runs that ended longer ago are removed by the worker's maintenance (a
    month partition at a time, see jobs/retention.py); their listing is 410. Unset: kept
    for ever."""
    delivery_data_days: Positive = 7
    """The recipients' `data` of a publish (patient data) is erased this many days after
    its run ended, by the worker's hourly maintenance (jobs/retention.py); a retry of such
    a run is then 412 `data_erased`."""
    audit_retention_days: Annotated[int, Meta(ge=1, le=36_600)] = 2190
    """The audit trail (`GET /v1/messaging/brands/{brand_id}/audit`) keeps every change this
    many days (six years: HIPAA's retention of documentation), then the worker's hourly
    maintenance drops it a whole month at a time (jobs/retention.py); no row is ever
    updated or deleted."""
    email_rate_limit: Rate | None = None
    """The most e-mails per second that all worker processes together send; unset: no
    limit. Token buckets in PostgreSQL (db/rate_limits.py); brands may have caps of their
    own (`PUT /v1/messaging/brands/{brand_id}/rate-limit`)."""
    sms_rate_limit: Rate | None = None
    """The most SMS per second that all worker processes together send; unset: no limit."""
    rate_limit_burst_seconds: Seconds = 0.2
    """A bucket holds at most this many seconds' worth of its rate (at least 1 message):
    any one second sends at most the limit plus that burst."""
    smtp_from: str | None = None
    """From address of e-mail campaigns that have no sender of their own."""
    publish_max_recipients: Positive = 100_000
    """Largest recipient list one publish accepts."""
    publish_max_body_bytes: Positive = 48 * 1024 * 1024
    """Largest request body the web process reads (a 100,000-recipient publish is ~7 MB,
    ~40 MB with 300 bytes of `data` each)."""
    publish_max_data_bytes: Positive = 4096
    """Largest `data` of one recipient of a publish, as JSON bytes."""
    http_max_header_bytes: Positive = 32 * 1024
    """Largest request line plus headers the web process reads (app/http/protocol.py); more
    is refused with 431 before it costs more. A bearer token is typically under 2 KiB."""
    db_pool_min_size: Positive = 2
    """Connections the asyncpg pool of each process keeps open."""
    db_pool_max_size: Positive = 10
    """Most connections of the asyncpg pool of each process."""
    db_pool_timeout_seconds: Seconds = 5.0
    """How long a request waits for a free database connection before it is answered
    503 with Retry-After (every connection busy, or the database away)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """Least severity logged; logs are one JSON object per line."""
    tracing: bool = False
    """Export OpenTelemetry traces (OTLP over HTTP): on when OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_TRACES_EXPORTER=otlp is set, unless
    OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none. The SDK reads the other OTEL_*
    variables itself (service name, headers, sampler, batching)."""

    @property
    def delivery_retention(self) -> timedelta | None:
        if self.delivery_retention_days is None:
            return None
        return timedelta(days=self.delivery_retention_days)

    @property
    def audit_retention(self) -> timedelta:
        return timedelta(days=self.audit_retention_days)

    @property
    def delivery_data_retention(self) -> timedelta:
        return timedelta(days=self.delivery_data_days)

    @property
    def jwt_key(self) -> str | None:
        """The key that verifies tokens: the public key if configured, else the secret."""
        if self.jwt_jwks_url:
            return None  # the keys are fetched, by kid
        if self.jwt_public_key:
            return self.jwt_public_key
        if self.jwt_secret:
            return self.jwt_secret
        return DEV_JWT_SECRET if self.dev_mode else None

    @property
    def jwt_algorithm(self) -> str:
        if not self.jwt_public_key:
            return "HS256"
        return "ES256" if _is_ec_key(self.jwt_public_key) else "RS256"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """The settings of `env` (default: the process's environment). An empty variable
        counts as unset."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(variable(field.name), "").strip()
            if field.name not in _COMPUTED and raw:
                values[field.name] = raw
        if "dev_mode" in values:
            values["dev_mode"] = values["dev_mode"].lower() in {"1", "true", "yes"}
        if "log_level" in values:
            values["log_level"] = values["log_level"].upper()
        values["tracing"] = _tracing_wanted(env)
        try:
            settings = msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            message, _, path = str(exc).partition(" - at `$.")
            name = path.rstrip("`")
            raise SettingsError(f"{variable(name)}={values[name]!r}: {message}") from None
        settings.check_events_webhook()
        settings.check_public_base_url()
        settings.check_unsubscribe()
        return settings

    def check_events_webhook(self) -> None:
        """An events URL needs its signing key: unsigned events could be forged."""
        url = self.events_webhook_url
        if url is not None and urlsplit(url).scheme not in {"http", "https"}:
            raise SettingsError(f"EVENTS_WEBHOOK_URL must be an http(s):// URL; got {url!r}")
        if url is not None and not self.events_webhook_secret:
            raise SettingsError(
                "EVENTS_WEBHOOK_URL needs EVENTS_WEBHOOK_SECRET, the key that signs events"
            )

    def check_public_base_url(self) -> None:
        """An origin (and path prefix) that routes can be appended to: no query, no fragment."""
        url = self.public_base_url
        if url is None:
            return
        parts = urlsplit(url)
        extras = parts.query or parts.fragment or "?" in url or "#" in url
        if parts.scheme not in {"http", "https"} or not parts.netloc or extras:
            raise SettingsError(
                f"PUBLIC_BASE_URL must be http(s)://host[:port][/prefix]; got {url!r}"
            )

    @property
    def public_base(self) -> str | None:
        """PUBLIC_BASE_URL without its trailing slash, for routes to be appended to."""
        return None if self.public_base_url is None else self.public_base_url.rstrip("/")

    def check_unsubscribe(self) -> None:
        """Keys long enough not to be guessed from a token, and the origin of their links."""
        secrets = self.unsubscribe_keys
        if any(len(secret) < MIN_UNSUBSCRIBE_SECRET for secret in secrets):
            raise SettingsError(
                f"UNSUBSCRIBE_SECRETS: each key must have at least {MIN_UNSUBSCRIBE_SECRET}"
                " characters"
            )
        if self.unsubscribe_secrets and self.unsubscribe_base is None:
            raise SettingsError(
                "UNSUBSCRIBE_SECRETS needs PUBLIC_BASE_URL, the origin of the unsubscribe links"
            )
        mailto = self.unsubscribe_mailto
        if mailto is not None and (mailto.count("@") != 1 or any(c in mailto for c in "?<>, ")):
            raise SettingsError(f"UNSUBSCRIBE_MAILTO must be an e-mail address; got {mailto!r}")

    @property
    def unsubscribe_keys(self) -> list[str]:
        """UNSUBSCRIBE_SECRETS as a list, the signing key first; in development mode
        without any, the public development key."""
        keys = [key.strip() for key in (self.unsubscribe_secrets or "").split(",") if key.strip()]
        if not keys and self.dev_mode:
            return [DEV_UNSUBSCRIBE_SECRET]
        return keys

    @property
    def unsubscribe_base(self) -> str | None:
        """The origin of unsubscribe links: PUBLIC_BASE_URL, or in development mode
        http://localhost:PORT."""
        if self.public_base is None and self.dev_mode:
            return f"http://localhost:{self.port}"
        return self.public_base


def _tracing_wanted(env: dict[str, str]) -> bool:
    """Whether the standard OpenTelemetry variables ask for traces (see Settings.tracing).
    A configuration this service cannot honour is an error, not silently no traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    if exporter not in ("", "otlp"):
        raise SettingsError(f"OTEL_TRACES_EXPORTER must be otlp or none; got {exporter!r}")
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if exporter != "otlp" and not any(env.get(name) for name in endpoints):
        return False
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", ""
    )
    if protocol.strip() not in ("", "http/protobuf"):
        raise SettingsError(f"OTLP protocol: only http/protobuf is supported; got {protocol!r}")
    return True


def _is_ec_key(pem: str) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return isinstance(load_pem_public_key(pem.encode()), ec.EllipticCurvePublicKey)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings.from_env()


def documented() -> dict[str, str]:
    """Each field's documentation: the string that follows it in the class body."""
    statements = ast.parse(inspect.getsource(Settings)).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for field, doc in itertools.pairwise(statements):
        named = isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
        if named and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
            docs[field.target.id] = " ".join(str(doc.value.value).split())
    return docs


def markdown_table() -> str:
    """The README's table of variables, from the fields, their defaults and their docs."""
    docs = documented()
    lines = ["| variable | meaning | default |", "| --- | --- | --- |"]
    for field in dataclasses.fields(Settings):
        if field.name in _COMPUTED:
            continue
        default = "unset" if field.default is None else f"`{field.default}`"
        lines.append(f"| `{variable(field.name)}` | {docs[field.name]} | {default} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
