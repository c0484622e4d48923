"""Delivery providers: where a message goes once the worker sends it.

`build_providers(settings)` gives the provider of each channel ("email", "sms").
"""

from __future__ import annotations

from collections.abc import Mapping

from app.core.settings import Settings
from jobs.providers.base import (
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
from jobs.providers.webhook import WebhookProvider

__all__ = [
    "LogProvider",
    "OutgoingMessage",
    "PermanentError",
    "Provider",
    "ProviderError",
    "SendResult",
    "SmtpProvider",
    "Throttled",
    "TransientError",
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
    # Sorted, the webhook comes last: only it opens anything (an HTTP pool) when built.
    for kind in sorted(set(kinds.values())):
        built[kind] = _build(kind, settings)
    return {channel: built[kind] for channel, kind in kinds.items()}


async def close_providers(providers: Mapping[str, Provider]) -> None:
    """Close each distinct provider once."""
    for provider in {id(p): p for p in providers.values()}.values():
        await provider.aclose()


def _check(channel: str, kind: str, settings: Settings) -> None:
    variable = f"{channel.upper()}_PROVIDER"
    if kind not in {"log", "smtp", "webhook"}:
        raise ValueError(f"{variable} must be log, smtp or webhook; got {kind!r}")
    if kind == "smtp" and channel != "email":
        raise ValueError(f"{variable}=smtp is not possible: SMTP delivers e-mail only")
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
    return LogProvider()
