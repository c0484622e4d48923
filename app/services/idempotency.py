"""Idempotency-Key of publish, with the semantics of the IETF draft "The Idempotency-Key
HTTP Header Field": a repeat of a key with the same body returns the original run and
creates nothing; with another body it is refused; while the first request is still in
flight, the repeat is told to retry.

The key is claimed inside the publish transaction (db/idempotency.py), so the key, the
run, its deliveries and its jobs commit together or not at all: a request that fails
leaves no key behind, and its retry publishes afresh.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec

from app.domain.errors import IdempotencyKeyReused, InvalidInput, RequestInProgress
from app.domain.schedule import check_send_at
from app.domain.schemas import PublishRequest, Run
from db.idempotency import IdempotencyKeyRepository

HEADER = "Idempotency-Key"
TTL = timedelta(hours=24)
"""How long a key holds; expired keys are purged (jobs/tasks.py)."""
RETRY_AFTER_SECONDS = 1
MAX_KEY_LENGTH = 255
# The draft makes the key a Structured Field string ("..."); many clients send it bare,
# which we accept when it is visible ASCII without quotes.
_SF_CHAR = r'(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])'
_BARE_CHAR = r"[\x21\x23-\x7e]"
_SF_STRING = re.compile(f'"({_SF_CHAR}*)"')
_BARE = re.compile(f"{_BARE_CHAR}+")
KEY_PATTERN = f'^(?:"{_SF_CHAR}{{1,{MAX_KEY_LENGTH}}}"|{_BARE_CHAR}{{1,{MAX_KEY_LENGTH}}})$'
"""The header's syntax and length as a JSON Schema (ECMA 262) pattern: 1 to MAX_KEY_LENGTH
characters of the key, bare or quoted (an escape `\\"` is one character of the key)."""


@dataclass(frozen=True)
class IdempotencyKey:
    value: str
    fingerprint: bytes
    """sha256 of the canonical request body: formatting and key order do not matter."""


def idempotency_key(header: str | None, body: PublishRequest) -> IdempotencyKey | None:
    """The request's key (None without the header); InvalidInput if it is malformed."""
    if header is None:
        return None
    if body.send_at is not None:  # one instant, whatever offset it was written with
        body = msgspec.structs.replace(body, send_at=_in_utc(body.send_at))
    return IdempotencyKey(parse_key(header), hashlib.sha256(msgspec.json.encode(body)).digest())


def _in_utc(send_at: datetime) -> datetime:
    """`send_at` in UTC. An instant that UTC cannot write within years 1 to 9999 (such as
    9999-12-31T23:59:59-14:00) is far outside send_at's bounds: InvalidInput, as
    check_send_at would say once the key is claimed."""
    try:
        return send_at.astimezone(UTC)
    except OverflowError:
        check_send_at(send_at, datetime.now(UTC))
        raise  # not reached: such an instant is out of bounds whatever the time now


def retry_key(header: str | None, run_id: UUID) -> IdempotencyKey | None:
    """The key of a retry of run `run_id`: its "body" is the run it retries, so the same
    key on a publish or on a retry of another run is a reuse (422)."""
    if header is None:
        return None
    return IdempotencyKey(parse_key(header), hashlib.sha256(f"retry {run_id}".encode()).digest())


def parse_key(header: str) -> str:
    if match := _SF_STRING.fullmatch(header):
        key = re.sub(r"\\(.)", r"\1", match.group(1))
    elif _BARE.fullmatch(header):
        key = header
    else:
        key = ""
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidInput(
            f"the {HEADER} header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            {f"header.{HEADER}": "invalid"},
        )
    return key


def lock_id(campaign_id: UUID, key: str) -> int:
    """The advisory lock of one key of one campaign, as PostgreSQL's signed bigint."""
    digest = hashlib.blake2b(f"idempotency:{campaign_id}:{key}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


async def claim_key(
    conn: asyncpg.Connection, campaign: asyncpg.Record, key: IdempotencyKey, run_id: UUID
) -> Run | None:
    """In the publish transaction: None if this request now owns `key` and goes on to
    publish as run `run_id`; the original run if the key was used with the same body.
    RequestInProgress while another request holds the key, IdempotencyKeyReused if the
    key was used with another body."""
    keys = IdempotencyKeyRepository(conn)
    scope = {"brand_id": campaign["brand_id"], "campaign_id": campaign["id"], "key": key.value}
    claimed = await keys.claim(
        **scope,
        fingerprint=key.fingerprint,
        run_id=run_id,
        ttl=TTL,
        lock_id=lock_id(campaign["id"], key.value),
    )
    if claimed:
        return None
    original = await keys.original(**scope)
    if original is None:
        raise RequestInProgress(
            f"a request with this {HEADER} is still being processed; retry shortly",
            retry_after=RETRY_AFTER_SECONDS,
        )
    if original["fingerprint"] != key.fingerprint:
        raise IdempotencyKeyReused(
            f"this {HEADER} was used for a request with a different body",
            {f"header.{HEADER}": key.value},
        )
    return Run(**{name: value for name, value in original.items() if name != "fingerprint"})
