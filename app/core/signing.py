"""`X-Signature: sha256=<hex HMAC-SHA256 of the raw body>`: how this service signs what it
sends (webhook messages, run events) and checks what providers send it."""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Signature"


def signature(secret: str, body: bytes) -> str:
    """The X-Signature value of `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str | None, body: bytes, header: str | None) -> bool:
    """Whether `header` is the signature of `body` with `secret` (never without a secret)."""
    if not secret or header is None:
        return False
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())
