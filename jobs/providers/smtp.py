"""E-mail through a real SMTP server, over a small pool of reused connections."""

from __future__ import annotations

import asyncio
import email.errors
import email.policy
import functools
import ssl
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.utils import formatdate, parseaddr
from typing import Literal
from urllib.parse import unquote, urlsplit

import aiosmtplib

from jobs.providers.base import (
    OutgoingMessage,
    PermanentError,
    ProviderError,
    SendResult,
    TransientError,
)

StartTls = Literal["auto", "always", "never"]
# aiosmtplib's start_tls: None upgrades when the server offers it, True insists, False never.
_START_TLS: dict[str, bool | None] = {"auto": None, "always": True, "never": False}


class SmtpProvider:
    name = "smtp"

    def __init__(
        self,
        url: str,
        starttls: StartTls = "auto",
        *,
        pool_size: int = 4,
        timeout: float = 30.0,
        default_sender: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """`url` is smtp://user:password@host:port, or smtps:// for implicit TLS.

        `default_sender` is the From of campaigns that have no sender; without it, the SMTP
        user name when it is an address. `tls_context` replaces the system's trusted CAs.
        """
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://user:password@host:port or smtps://…")
        if starttls not in _START_TLS:
            raise ValueError(f"SMTP_STARTTLS must be auto, always or never; got {starttls!r}")
        implicit_tls = parts.scheme == "smtps"
        username = unquote(parts.username) if parts.username else None
        self._new_client = functools.partial(
            aiosmtplib.SMTP,
            hostname=parts.hostname,
            port=parts.port or (465 if implicit_tls else 25),
            username=username,
            password=unquote(parts.password) if parts.password else None,
            use_tls=implicit_tls,
            start_tls=False if implicit_tls else _START_TLS[starttls],
            timeout=timeout,
            tls_context=tls_context,
        )
        if default_sender is None and username and "@" in username:
            default_sender = username
        self._default_sender = default_sender
        # A connection carries one message at a time; the semaphore bounds the pool.
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[aiosmtplib.SMTP] = []

    async def send(self, message: OutgoingMessage) -> SendResult:
        sender = message.sender or self._default_sender
        if not sender:
            raise PermanentError("the campaign has no sender and no default sender is configured")
        mail = _compose(message, sender)
        async with self._slots:
            client: aiosmtplib.SMTP | None = None
            reusable = False
            try:
                client = await self._checkout()
                await client.send_message(
                    mail, sender=parseaddr(sender)[1], recipients=[message.recipient]
                )
                reusable = True
            except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
                # After a refusal aiosmtplib has reset the envelope: the connection stays good.
                reusable = _is_refusal(exc) and client is not None and client.is_connected
                raise _provider_error(exc) from exc
            finally:
                if client is not None:
                    self._checkin(client, reusable)
        return SendResult(provider_message_id=str(mail["Message-ID"]))

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                pass  # the server is gone already; nothing is lost
            finally:
                client.close()

    async def _checkout(self) -> aiosmtplib.SMTP:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:  # the server may have closed it while it was idle
                return client
            client.close()
        client = self._new_client()
        await client.connect()
        return client

    def _checkin(self, client: aiosmtplib.SMTP, reusable: bool) -> None:
        if reusable:
            self._idle.append(client)
        else:
            client.close()


class _UriListHeader(UnstructuredHeader, BaseHeader):  # BaseHeader: the stubs miss it
    """List-Unsubscribe's `<URI>, <URI>`, folded between the URIs only. The standard folder
    turns a URI longer than a 78-character line into RFC 2047 encoded-words, which RFC 2369
    readers (mailbox providers' unsubscribe buttons) do not decode. Each line stays under
    RFC 5322's 998 characters: a token has at most MAX_TOKEN_CHARACTERS."""

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: " + f",{policy.linesep} <".join(self.split(", <")) + policy.linesep


_HEADERS = HeaderRegistry()
_HEADERS.map_to_type("list-unsubscribe", _UriListHeader)
_POLICY = email.policy.default.clone(header_factory=_HEADERS)


def _compose(message: OutgoingMessage, sender: str) -> EmailMessage:
    mail = EmailMessage(policy=_POLICY)
    try:
        mail["From"] = sender
        mail["To"] = message.recipient
        if message.subject is not None:
            mail["Subject"] = message.subject
        mail["Date"] = formatdate(usegmt=True)
        # Stable across attempts, so that a receiver can drop a repeated delivery.
        mail["Message-ID"] = f"<{message.delivery_id}@messaging>"
        mail["X-Delivery-ID"] = message.delivery_id
        for name, value in message.headers.items():
            mail[name] = value
        mail.set_content(message.body)
        if message.html_body is not None:  # multipart/alternative: the text, then the HTML
            mail.add_alternative(message.html_body, subtype="html")
    except (ValueError, email.errors.MessageError) as exc:  # e.g. a line break in the subject
        raise PermanentError(f"cannot build the e-mail: {exc}") from exc
    return mail


def _is_refusal(exc: BaseException) -> bool:
    return isinstance(exc, aiosmtplib.SMTPResponseException | aiosmtplib.SMTPRecipientsRefused)


def _provider_error(exc: BaseException) -> ProviderError:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]  # one recipient per message
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        detail, code = f"SMTP {exc.code}: {exc.message}", exc.code
        if 500 <= code < 600:
            return PermanentError(detail, status_code=code)
        return TransientError(detail, status_code=code)
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):  # timeouts and lost connections included
        return TransientError(detail)
    # A bad address, or a server without a required extension (STARTTLS, SMTPUTF8).
    return PermanentError(detail)
