"""Delivery providers: where a message goes once the worker sends it.

`build_providers(settings)` gives the provider of each channel ("email", "sms").
"""

from __future__ import annotations

from collections.abc import Mapping

from app.core.settings import Settings
from app.core.settings import variable as variable_of
from jobs.providers.base import (
    OptedOut,
    OutgoingMessage,
    PermanentError,
    Provider,
    ProviderError,
    SendResult,
    Throttled,
    TransientError,
)
from jobs.providers.log import LogProvider
from jobs.providers.smtp import SmtpProvider
from jobs.providers.twilio import TwilioProvider
from jobs.providers.webhook import WebhookProvider

__all__ = [
    "LogProvider",
    "OptedOut",
    "OutgoingMessage",
    "PermanentError",
    "Provider",
    "ProviderError",
    "SendResult",
    "SmtpProvider",
    "Throttled",
    "TransientError",
    "TwilioProvider",
    "WebhookProvider",
    "build_providers",
    "close_providers",
]


def build_providers(settings: Settings) -> dict[str, Provider]:
    """The provider of each channel; both channels share one instance of the same kind."""
    kinds = {"email": settings.email_provider, "sms": settings.sms_provider}
    # Check everything before building anything, so that no connection pool is left open.
    for channel, kind in kinds.items():
        _check(channel, kind, settings)
    built: dict[str, Provider] = {}
    # None opens a connection when built (at its first send): one that refuses its
    # settings here leaves nothing open behind it.
    for kind in sorted(set(kinds.values())):
        built[kind] = _build(kind, settings)
    return {channel: built[kind] for channel, kind in kinds.items()}


async def close_providers(providers: Mapping[str, Provider]) -> None:
    """Close each distinct provider once."""
    for provider in {id(p): p for p in providers.values()}.values():
        await provider.aclose()


def _check(channel: str, kind: str, settings: Settings) -> None:
    variable = f"{channel.upper()}_PROVIDER"
    if kind not in {"log", "smtp", "webhook", "twilio"}:
        raise ValueError(f"{variable} must be log, smtp, webhook or twilio; got {kind!r}")
    if kind == "smtp" and channel != "email":
        raise ValueError(f"{variable}=smtp is not possible: SMTP delivers e-mail only")
    if kind == "twilio" and channel != "sms":
        raise ValueError(f"{variable}=twilio is not possible: Twilio's Messages API sends SMS")
    if kind == "twilio":
        # Without PUBLIC_BASE_URL no delivery receipt could ever come back.
        for needed in ("twilio_account_sid", "twilio_auth_token", "public_base_url"):
            if not getattr(settings, needed):
                raise ValueError(f"{variable}=twilio needs {variable_of(needed)}")
    if kind == "smtp" and not settings.smtp_url:
        raise ValueError(f"{variable}=smtp needs SMTP_URL (smtp://user:password@host:port)")
    if kind == "webhook" and not settings.webhook_url:
        raise ValueError(f"{variable}=webhook needs WEBHOOK_URL")
    if kind == "webhook" and not settings.webhook_secret:
        # Unsigned messages could not be told from forged ones by the receiver.
        raise ValueError(f"{variable}=webhook needs WEBHOOK_SECRET, the key that signs each body")


def _build(kind: str, settings: Settings) -> Provider:
    if kind == "smtp":
        assert settings.smtp_url is not None
        return SmtpProvider(
            settings.smtp_url, settings.smtp_starttls, default_sender=settings.smtp_from
        )
    if kind == "webhook":
        assert settings.webhook_url is not None and settings.webhook_secret is not None
        return WebhookProvider(
            settings.webhook_url,
            settings.webhook_secret,
            timeout=settings.webhook_timeout_seconds,
            max_connections=settings.webhook_max_connections,
        )
    if kind == "twilio":
        assert settings.twilio_account_sid and settings.twilio_auth_token
        assert settings.public_base is not None
        return TwilioProvider(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            public_base=settings.public_base,
            api_url=settings.twilio_api_url,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            timeout=settings.twilio_timeout_seconds,
            max_connections=settings.twilio_max_connections,
        )
    return LogProvider()
