"""`X-Signature: sha256=<hex HMAC-SHA256 of the raw body>`: how this service signs what it
sends (webhook messages, run events) and checks what providers send it; and Twilio's
`X-Twilio-Signature`, checked as Twilio's own validators check it."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit

HEADER = "X-Signature"


def signature(secret: str, body: bytes) -> str:
    """The X-Signature value of `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str | None, body: bytes, header: str | None) -> bool:
    """Whether `header` is the signature of `body` with `secret` (never without a secret)."""
    if not secret or header is None:
        return False
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())


# Twilio's X-Twilio-Signature, on the status callbacks and inbound texts it posts to us.

TWILIO_HEADER = "X-Twilio-Signature"


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Base64 of HMAC-SHA1, keyed with the account's auth token, over the full URL that
    Twilio requested followed by each form field's name and value, sorted by name (the
    values of a repeated name sorted too), as Twilio's own validators compute it."""
    text = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(hmac.digest(auth_token.encode(), text.encode(), "sha1")).decode()


def twilio_signature_matches(
    auth_token: str | None, url: str, params: Iterable[tuple[str, str]], header: str | None
) -> bool:
    """Whether `header` signs the request to `url` with `params`: with the URL's port and
    without it, as Twilio's validators try both (Twilio signs either form, depending on
    how the URL was configured)."""
    if not auth_token or header is None:
        return False
    params = list(params)
    given = header.strip().encode()
    return any(
        hmac.compare_digest(twilio_signature(auth_token, candidate, params).encode(), given)
        for candidate in _with_and_without_port(url)
    )


def _with_and_without_port(url: str) -> tuple[str, str]:
    """`url` with its port (the scheme's default added if it has none), and without any."""
    parts = urlsplit(url)
    host, _, port = parts.netloc.rpartition(":")
    if not host or not port.isdigit():  # no port (an IPv6 host's colons are in brackets)
        host, port = parts.netloc, ""
    default = "443" if parts.scheme == "https" else "80"
    with_port = parts._replace(netloc=f"{host}:{port or default}").geturl()
    without_port = parts._replace(netloc=host).geturl()
    return with_port, without_port
