"""A mail relay: an aiosmtpd server that records every mail and answers as the test scripts."""

from __future__ import annotations

from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.fakes.server import HOST, free_port
from tests.fakes.tls import Tls
from tests.waiting import PATIENCE, returned


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    peer: tuple[str, int]
    """The client's end of the connection: the same for mails sent on one connection."""
    tls: bool
    login: str | None
    """The user that authenticated on the connection, if any."""


class SmtpSink:
    """An aiosmtpd server that accepts everything, except the recipients in `replies`, whose
    RCPT gets the scripted answer (e.g. "550 5.1.1 No such user")."""

    def __init__(
        self,
        *,
        starttls: Tls | None = None,
        implicit_tls: Tls | None = None,
        logins: dict[str, str] | None = None,
        idle_timeout: float = 300,
    ) -> None:
        self.messages: list[ReceivedMail] = []
        self.replies: dict[str, str] = {}
        self.port = free_port()
        self._logins = logins
        kwargs: dict[str, Any] = {"timeout": idle_timeout}
        if starttls is not None:
            kwargs["tls_context"] = starttls.server
        if logins is not None:
            # AUTH is offered after STARTTLS only (aiosmtpd's default), as real relays do.
            kwargs["authenticator"] = self._authenticate
        self._controller = Controller(
            self,
            hostname=HOST,
            port=self.port,
            ssl_context=implicit_tls.server if implicit_tls else None,
            ready_timeout=PATIENCE,  # its default, 5 s, is too short for a loaded machine
            **kwargs,
        )

    def url(self, scheme: str = "smtp", userinfo: str = "") -> str:
        return f"{scheme}://{userinfo + '@' if userinfo else ''}{HOST}:{self.port}"

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        # aiosmtpd's stop() joins its server's thread with no bound, and on Python 3.12+
        # that thread waits for the clients' connections to close (aiosmtpd issue 394).
        returned(self._controller.stop, f"the stop of the SMTP fake on port {self.port}")

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def to(self, recipient: str) -> list[ReceivedMail]:
        return [mail for mail in self.messages if recipient in mail.rcpt_tos]

    # aiosmtpd handler hooks; they run in the server's thread.
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.replies:
            return self.replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # As a mailbox would store it: with the wire's CRLF line ends made local.
        content = (envelope.original_content or b"").replace(b"\r\n", b"\n")
        transport = server.transport
        self.messages.append(
            ReceivedMail(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                message=message_from_bytes(content, policy=policy.default),
                peer=cast(tuple[str, int], session.peer),  # annotated str, but an address pair
                tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
                login=_login_of(session),
            )
        )
        return "250 Message accepted for delivery"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        logins = self._logins or {}
        ok = (
            isinstance(data, LoginPassword)
            and logins.get(data.login.decode()) == data.password.decode()
        )
        # handled=False: aiosmtpd itself answers 535 to a wrong password.
        return AuthResult(success=ok, handled=False, auth_data=data)


def _login_of(session: Session) -> str | None:
    data = session.auth_data
    return data.login.decode() if isinstance(data, LoginPassword) else None
