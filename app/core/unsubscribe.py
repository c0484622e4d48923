"""One-click unsubscribe links (RFC 8058): the token in them, and the headers that carry them.

A token is the unsubscription itself (brand, topic, address, the run whose message carried
it, the day it was made), sealed with AES-256-GCM-SIV under a key derived from the first
of UNSUBSCRIBE_SECRETS: it cannot be made or altered without the key, shows nothing of the
address, and opens with no database read, in microseconds. Every key listed opens the
tokens it made, so keys rotate without breaking the links of mail already sent. GCM-SIV
rather than GCM: its nonces are random, and a repeated nonce (2^-32 odds after 2^32
tokens of one key, a few years of a busy sender's mail) reveals at most that two tokens
are equal, where GCM's would give the key to forge with. Why no table of tokens: ADR 0056.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from app.core.settings import Settings

PATH = "/v1/messaging/unsubscribe"
TOKEN_DAYS = 730
"""How long a token opens: two years from the day it was made (at least a year is the
contract), whatever DELIVERY_RETENTION_DAYS removes meanwhile."""
MAX_TOKEN_CHARACTERS = 1024
"""Longer is no token of ours (the longest address, brand and topic make about 700): it
is refused before any decoding."""
ONE_CLICK = {"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
"""RFC 8058: the link takes a POST, and a mailbox provider may send it for its user."""
_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_DAY_SECONDS = 86400


class Unsubscription(msgspec.Struct, array_like=True, frozen=True):
    """What a token says: who asked not to get what, since which message."""

    day: Annotated[int, msgspec.Meta(ge=0)]
    """The day the token was made (days since 1970-01-01, UTC)."""
    brand_id: str
    topic: str
    address: str
    """Normalised, as suppressions store it (e-mail lower-cased)."""
    run: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]

    @property
    def run_id(self) -> UUID:
        return UUID(bytes=self.run)


_DECODER = msgspec.msgpack.Decoder(Unsubscription)


@dataclass(frozen=True, slots=True)
class UnsubscribeLink:
    url: str
    """`{PUBLIC_BASE_URL}/v1/messaging/unsubscribe/{token}`: the template's `unsubscribe_url`."""
    headers: dict[str, str]
    """List-Unsubscribe and List-Unsubscribe-Post, for an e-mail; none for an SMS."""


@dataclass(frozen=True)
class UnsubscribeKeys:
    """The origin of the links and the keys of their tokens, the signing one first."""

    base_url: str
    ciphers: tuple[AESGCMSIV, ...]
    mailto: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> UnsubscribeKeys | None:
        """None when the settings have no key (or no origin): no link can be made."""
        base, secrets = settings.unsubscribe_base, settings.unsubscribe_keys
        if base is None or not secrets:
            return None
        return cls(base, tuple(_cipher(secret) for secret in secrets), settings.unsubscribe_mailto)

    def token(
        self, *, brand_id: str, topic: str, address: str, run_id: UUID, now: float | None = None
    ) -> str:
        day = int((time.time() if now is None else now) // _DAY_SECONDS)
        payload = msgspec.msgpack.encode(
            Unsubscription(day, brand_id, topic, address, run_id.bytes)
        )
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self.ciphers[0].encrypt(nonce, payload, _VERSION)
        return base64.urlsafe_b64encode(_VERSION + nonce + sealed).rstrip(b"=").decode("ascii")

    def read(self, token: str, now: float | None = None) -> Unsubscription | None:
        """What the token says, if one of the keys made it and it has not expired; None
        for anything else, with no more said (a 404 page)."""
        if not 0 < len(token) <= MAX_TOKEN_CHARACTERS or not token.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        # The last character may carry unused bits: its other spellings decode to the same
        # bytes. Only the one this code writes opens, so that an altered link never does.
        if base64.urlsafe_b64encode(raw).rstrip(b"=") != token.encode("ascii"):
            return None
        if raw[:1] != _VERSION or len(raw) <= 1 + _NONCE_BYTES + _TAG_BYTES:
            return None
        nonce, sealed = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
        for cipher in self.ciphers:
            try:
                payload = cipher.decrypt(nonce, sealed, _VERSION)
            except InvalidTag:
                continue
            try:
                found = _DECODER.decode(payload)
            except msgspec.DecodeError:  # sealed by us, but not of this shape: a leaked key
                return None
            today = int((time.time() if now is None else now) // _DAY_SECONDS)
            return found if today - TOKEN_DAYS <= found.day <= today + 1 else None
        return None

    def url(self, token: str) -> str:
        return f"{self.base_url}{PATH}/{token}"

    def preview_url(self, *, brand_id: str, topic: str, address: str) -> str:
        """A link as long as the address's real one, whose token opens nothing (`A`s are
        no version of ours): a preview shows the message, it does not hand a working
        link to whoever may read campaigns."""
        token = self.token(brand_id=brand_id, topic=topic, address=address, run_id=UUID(int=0))
        return self.url("A" * len(token))

    def headers(self, token: str, url: str | None = None) -> dict[str, str]:
        """RFC 2369's List-Unsubscribe (the HTTPS link, then `mailto:` if configured) and
        RFC 8058's List-Unsubscribe-Post. `url`: the token's, if made already."""
        targets = [f"<{url or self.url(token)}>"]
        if self.mailto is not None:
            targets.append(f"<mailto:{self.mailto}?subject=unsubscribe%20{token}>")
        return {"List-Unsubscribe": ", ".join(targets), **ONE_CLICK}


def unsubscribe_link(
    keys: UnsubscribeKeys,
    *,
    brand_id: str,
    topic: str,
    channel: str,
    address: str,
    run_id: UUID,
) -> UnsubscribeLink:
    """The link of one delivery of a campaign with a topic, and its headers (e-mail only).
    `address` normalised, as suppressions store it."""
    token = keys.token(brand_id=brand_id, topic=topic, address=address, run_id=run_id)
    url = keys.url(token)
    return UnsubscribeLink(url, keys.headers(token, url) if channel == "email" else {})


def _cipher(secret: str) -> AESGCMSIV:
    """AES-256-GCM-SIV under a key derived from `secret`, never the secret itself."""
    key = hmac.new(secret.encode(), b"messaging unsubscribe token", hashlib.sha256).digest()
    return AESGCMSIV(key)
