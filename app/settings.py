"""The service's configuration, read once from the environment (12-factor)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

from app.schemas import MAX_PER_SECOND, MIN_PER_SECOND

Provider = Literal["log", "smtp", "webhook"]

# Used only when MESSAGING_DEV_MODE is on and no key is configured; never in production.
DEV_JWT_SECRET = "messaging-development-secret-not-for-production"


class SettingsError(Exception):
    """The environment does not describe a runnable service."""


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@localhost:5432/messaging"
    """PostgreSQL DSN used by web, worker and alembic."""
    port: int = 8000
    """Port the web process listens on."""
    jwt_secret: str | None = None
    """HS256 key that verifies bearer tokens."""
    jwt_public_key: str | None = None
    """PEM public key (RSA or EC) that verifies RS256/ES256 tokens instead of a shared secret."""
    jwt_jwks_url: str | None = None
    """URL of an identity provider's JWKS document: RS256/ES256 tokens are verified with
    the key their `kid` names, instead of JWT_SECRET / JWT_PUBLIC_KEY (not allowed with it)."""
    jwt_jwks_refetch_seconds: float = 10.0
    """Fetches of the JWKS are at least this far apart, whatever unknown `kid`s arrive."""
    jwt_jwks_max_age_seconds: float = 300.0
    """Keys fetched longer ago are refetched in the background on the next request (so a key
    the provider withdrew stops working); requests go on with the keys in hand meanwhile."""
    jwt_jwks_timeout_seconds: float = 2.0
    """The longest a fetch of the JWKS may take; only requests with an unknown `kid` wait."""
    jwt_issuer: str | None = None
    """When set, tokens must carry this `iss`."""
    jwt_audience: str | None = None
    """When set, tokens must carry this `aud`."""
    cursor_secret: str | None = None
    """The secret that pagination cursors are encrypted with (AES-256-GCM, app/pagination.py).
    Default: JWT_SECRET, so that every web process of a deployment accepts the others'
    cursors. Required with JWT_PUBLIC_KEY or JWT_JWKS_URL (a public key is no secret)."""
    dev_mode: bool = False
    """MESSAGING_DEV_MODE=1: allows starting without a JWT key (a fixed, public dev secret)."""
    email_provider: Provider = "log"
    sms_provider: Provider = "log"
    smtp_url: str | None = None
    """smtp://user:password@host:port, or smtps:// for implicit TLS."""
    smtp_starttls: Literal["auto", "always", "never"] = "auto"
    """STARTTLS when the server offers it (auto), always required, or never used."""
    webhook_url: str | None = None
    webhook_secret: str | None = None
    """HMAC-SHA256 key that signs each webhook body (X-Signature)."""
    events_webhook_url: str | None = None
    """Where run events (run.started, run.completed, run.cancelled) are POSTed. Unset: events
    are still recorded (table run_events) but never sent."""
    events_webhook_secret: str | None = None
    """HMAC-SHA256 key that signs each event body (X-Signature); required with the URL."""
    events_retry_hours: int = 72
    """How long an event is retried while the receiver fails (the contract asks >= 24 h)."""
    events_retry_base_seconds: float = 5.0
    """Backoff of a failed event POST: base * 2^attempts, +-50% jitter, at most 1 h."""
    sendgrid_webhook_public_key: str | None = None
    """The verification key of SendGrid's signed Event Webhook (base64 DER, as SendGrid shows
    it, or PEM): POST /v1/messaging/providers/sendgrid/events is refused (401) without it."""
    webhook_max_connections: int = 8
    """Connections one worker process keeps to WEBHOOK_URL; a send waits for a free one, and
    that wait costs neither time of its timeout nor an attempt. 2 to 32 measured alike
    against a fast local receiver (docs/performance.md); raise it for a slow receiver."""
    webhook_timeout_seconds: float = 10.0
    """How long one webhook send may hold its connection (connect, request, the answer read)
    before it counts as a transient failure."""
    delivery_batch_size: int = 500
    """Deliveries per procrastinate job."""
    delivery_max_attempts: int = 5
    """Attempts before a transient failure becomes `failed`."""
    worker_concurrency: int = 32
    """Sends in flight per worker process."""
    worker_jobs: int = 4
    """deliver_batch jobs one worker process runs side by side (they share the sends)."""
    delivery_retry_base_seconds: float = 2.0
    """Backoff of a transient failure: base * 2^(attempts-1), with +-50% jitter, max 300 s."""
    stalled_job_seconds: int = 30
    """A job whose worker sent no heartbeat for this long is requeued (worker crashed)."""
    metrics_port: int | None = None
    """Port of the web process's Prometheus endpoint (`/metrics`), apart from PORT: set,
    `/metrics` is served there only, and a deployment exposes PORT alone to the public.
    Unset or 0: `/metrics` is on PORT, beside the API."""
    metrics_refresh_seconds: float = 5.0
    """How often the web process reads the queue figures of `/metrics` (ops_queue_depth)
    from the database; a scrape never does."""
    metrics_cache_seconds: float = 1.0
    """A scrape of `/metrics` on PORT within this long of the last one gets the same text:
    however often anyone asks, it is rendered at most once in that time. 0: every time."""
    worker_metrics_port: int | None = None
    """Port of the worker's Prometheus endpoint (`/metrics`); unset or 0: none. One port per
    worker process: several workers on one host need one each."""
    job_retention_hours: int = 168
    """Succeeded procrastinate jobs (and their events) older than this are deleted hourly."""
    delivery_retention_days: int | None = None
    """Deliveries of runs that ended longer ago are removed by the worker's maintenance (a
    month partition at a time, see jobs/retention.py); their listing is 410. Unset: kept
    for ever."""
    email_rate_limit: float | None = None
    """EMAIL_RATE_LIMIT: the most e-mails per second that all worker processes together
    send; unset: no limit. Enforced by token buckets in PostgreSQL (db/rate_limits.py)."""
    sms_rate_limit: float | None = None
    """SMS_RATE_LIMIT: the same for SMS."""
    rate_limit_burst_seconds: float = 0.2
    """A bucket holds at most this many seconds' worth of its rate (at least 1 message):
    any one second sends at most the limit plus that burst."""
    smtp_from: str | None = None
    """From address of e-mail campaigns that have no sender of their own."""
    publish_max_recipients: int = 100_000
    """Largest recipient list one publish accepts."""
    publish_max_body_bytes: int = 32 * 1024 * 1024
    """Largest request body the web process reads (a 100,000-recipient publish is ~7 MB)."""
    http_max_header_bytes: int = 32 * 1024
    """Largest request line plus headers the web process reads (app/http_protocol.py); more
    is refused with 431 before it costs more. A bearer token is typically under 2 KiB."""
    db_pool_min_size: int = 2
    db_pool_max_size: int = 10
    db_pool_timeout_seconds: float = 5.0
    """How long a request waits for a free database connection before it is answered
    503 with Retry-After (every connection busy, or the database away)."""
    log_level: str = "INFO"
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
        env = dict(os.environ if env is None else env)
        defaults = cls()
        try:
            settings = cls(
                database_url=env.get("DATABASE_URL", defaults.database_url),
                port=int(env.get("PORT", defaults.port)),
                jwt_secret=env.get("JWT_SECRET") or None,
                jwt_public_key=env.get("JWT_PUBLIC_KEY") or None,
                jwt_jwks_url=env.get("JWT_JWKS_URL") or None,
                jwt_jwks_refetch_seconds=_seconds(env, "JWT_JWKS_REFETCH_SECONDS", 10.0),
                jwt_jwks_max_age_seconds=_seconds(env, "JWT_JWKS_MAX_AGE_SECONDS", 300.0),
                jwt_jwks_timeout_seconds=_seconds(env, "JWT_JWKS_TIMEOUT_SECONDS", 2.0),
                jwt_issuer=env.get("JWT_ISSUER") or None,
                jwt_audience=env.get("JWT_AUDIENCE") or None,
                cursor_secret=env.get("CURSOR_SECRET") or None,
                dev_mode=env.get("MESSAGING_DEV_MODE", "") in {"1", "true", "yes"},
                email_provider=_choice(env, "EMAIL_PROVIDER", ("log", "smtp", "webhook")),
                sms_provider=_choice(env, "SMS_PROVIDER", ("log", "webhook")),
                smtp_url=env.get("SMTP_URL") or None,
                smtp_starttls=_choice(env, "SMTP_STARTTLS", ("auto", "always", "never")),
                webhook_url=env.get("WEBHOOK_URL") or None,
                webhook_secret=env.get("WEBHOOK_SECRET") or None,
                events_webhook_url=env.get("EVENTS_WEBHOOK_URL") or None,
                events_webhook_secret=env.get("EVENTS_WEBHOOK_SECRET") or None,
                events_retry_hours=_at_least(env, "EVENTS_RETRY_HOURS", 72, minimum=24),
                events_retry_base_seconds=_seconds(env, "EVENTS_RETRY_BASE_SECONDS", 5.0),
                sendgrid_webhook_public_key=env.get("SENDGRID_WEBHOOK_PUBLIC_KEY") or None,
                webhook_max_connections=_positive(env, "WEBHOOK_MAX_CONNECTIONS", 8),
                webhook_timeout_seconds=_seconds(env, "WEBHOOK_TIMEOUT_SECONDS", 10.0),
                delivery_batch_size=_positive(env, "DELIVERY_BATCH_SIZE", 500),
                delivery_max_attempts=_positive(env, "DELIVERY_MAX_ATTEMPTS", 5),
                worker_concurrency=_positive(env, "WORKER_CONCURRENCY", 32),
                worker_jobs=_positive(env, "WORKER_JOBS", 4),
                delivery_retry_base_seconds=_seconds(env, "DELIVERY_RETRY_BASE_SECONDS", 2.0),
                stalled_job_seconds=_positive(env, "STALLED_JOB_SECONDS", 30),
                metrics_port=int(env.get("METRICS_PORT") or 0) or None,
                metrics_refresh_seconds=_seconds(env, "METRICS_REFRESH_SECONDS", 5.0),
                metrics_cache_seconds=_at_least_zero(env, "METRICS_CACHE_SECONDS", 1.0),
                worker_metrics_port=int(env.get("WORKER_METRICS_PORT") or 0) or None,
                smtp_from=env.get("SMTP_FROM") or None,
                job_retention_hours=_positive(env, "JOB_RETENTION_HOURS", 168),
                delivery_retention_days=_optional_positive(env, "DELIVERY_RETENTION_DAYS"),
                email_rate_limit=_optional_rate(env, "EMAIL_RATE_LIMIT"),
                sms_rate_limit=_optional_rate(env, "SMS_RATE_LIMIT"),
                rate_limit_burst_seconds=_seconds(env, "RATE_LIMIT_BURST_SECONDS", 0.2),
                publish_max_recipients=_positive(env, "PUBLISH_MAX_RECIPIENTS", 100_000),
                publish_max_body_bytes=_positive(
                    env, "PUBLISH_MAX_BODY_BYTES", defaults.publish_max_body_bytes
                ),
                http_max_header_bytes=_positive(
                    env, "HTTP_MAX_HEADER_BYTES", defaults.http_max_header_bytes
                ),
                db_pool_min_size=_positive(env, "DB_POOL_MIN_SIZE", 2),
                db_pool_max_size=_positive(env, "DB_POOL_MAX_SIZE", 10),
                db_pool_timeout_seconds=_seconds(env, "DB_POOL_TIMEOUT_SECONDS", 5.0),
                log_level=env.get("LOG_LEVEL", "INFO").upper(),
                tracing=_tracing_wanted(env),
            )
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
        settings.check_events_webhook()
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


def _choice(env: dict[str, str], name: str, allowed: tuple[str, ...]) -> Any:
    value = env.get(name) or allowed[0]
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _positive(env: dict[str, str], name: str, default: int) -> int:
    return _at_least(env, name, default, minimum=1)


def _at_least(env: dict[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number; got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}; got {value}")
    return value


def _optional_positive(env: dict[str, str], name: str) -> int | None:
    if not env.get(name):
        return None
    return _positive(env, name, 0)


def _optional_rate(env: dict[str, str], name: str) -> float | None:
    """Messages per second, MIN_PER_SECOND to MAX_PER_SECOND (as a brand's own cap); unset
    or empty: None (no limit)."""
    if not env.get(name):
        return None
    value = _seconds(env, name, 0.0)
    if not MIN_PER_SECOND <= value <= MAX_PER_SECOND:
        raise SettingsError(
            f"{name} must be {MIN_PER_SECOND} to {MAX_PER_SECOND:,.0f} messages per second;"
            f" got {env[name]}"
        )
    return value


def _seconds(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds; got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name} must be a finite number more than 0; got {raw}")
    return value


def _at_least_zero(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds; got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"{name} must be a finite number, 0 or more; got {raw}")
    return value


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
