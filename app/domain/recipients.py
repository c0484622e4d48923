"""Which recipients of a publish can be settled at once, and why."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol

# WHATWG's "valid e-mail address", with at least one dot in the domain.
_EMAIL = re.compile(
    r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+"
    r"@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
)
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
MAX_EMAIL_LENGTH = 254
ADDRESS_PATTERN = f"^(?:(?=.{{1,{MAX_EMAIL_LENGTH}}}$){_EMAIL.pattern}|{_E164.pattern})$"
"""An e-mail address (at most MAX_EMAIL_LENGTH characters) or an E.164 number, as a JSON
Schema (ECMA 262) pattern."""
_VALIDATORS: dict[str, Callable[[str], re.Match[str] | None]] = {
    "email": _EMAIL.fullmatch,
    "sms": _E164.fullmatch,
}
_MAX_LENGTH = {"email": MAX_EMAIL_LENGTH, "sms": 16}

DUPLICATE = "duplicate"
INVALID = "invalid_recipient"
SUPPRESSED = "suppressed"


class HasAddress(Protocol):
    @property
    def recipient(self) -> str: ...


def normalise(channel: str, address: str) -> str:
    """The form addresses are compared in: e-mail case-insensitively, phone numbers as is."""
    return address.lower() if channel == "email" else address


def channel_of(address: str) -> str | None:
    """The channel whose address `address` is ("email" or "sms"), or None if neither."""
    for channel, is_valid in _VALIDATORS.items():
        if len(address) <= _MAX_LENGTH[channel] and is_valid(address) is not None:
            return channel
    return None


def normalise_all(channel: str, recipients: Sequence[HasAddress]) -> list[str]:
    if channel == "email":
        return [r.recipient.lower() for r in recipients]
    return [r.recipient for r in recipients]


def skip_reasons(channel: str, keys: list[str], suppressed: set[str]) -> dict[int, str]:
    """Position -> reason for every recipient that is skipped at publish.

    `keys` are the normalised addresses (`normalise_all`). The first occurrence of an
    address is the one that is delivered; later ones are duplicates. An invalid address
    is `invalid_recipient` even when repeated.
    """
    # Validity depends only on the normalised key (the patterns ignore case), so it is
    # checked once per key; the common case (all valid, none repeated, none suppressed)
    # then costs a few passes in C instead of a Python loop over every recipient.
    is_valid = _VALIDATORS[channel]
    too_long = _MAX_LENGTH[channel]
    unique = set(keys)
    invalid = {key for key in unique if len(key) > too_long or is_valid(key) is None}
    hit = suppressed & unique
    if not invalid and not hit and len(unique) == len(keys):
        return {}
    skips: dict[int, str] = {}
    seen: set[str] = set()
    for position, key in enumerate(keys):
        if key in invalid:
            skips[position] = INVALID
        elif key in seen:
            skips[position] = DUPLICATE
        else:
            seen.add(key)
            if key in hit:
                skips[position] = SUPPRESSED
    return skips
