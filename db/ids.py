"""Run ids: UUIDv7 (RFC 9562), so that a range of ids is a range of time.

`deliveries` is partitioned by month of its run id (alembic/versions/0006); the database
makes the same ids with `uuid_v7()` (the default of runs.id).
"""

from __future__ import annotations

import secrets
import time
from uuid import UUID

_TIMESTAMP_BITS = 48
_VERSION = 7 << 76
_VARIANT = 0b10 << 62


def uuid7(unix_ms: int | None = None) -> UUID:
    """A UUIDv7 of the millisecond `unix_ms` (default: now): 48 bits of time, then 74
    random bits around the version and variant fields."""
    if unix_ms is None:
        unix_ms = time.time_ns() // 1_000_000
    rand_a = secrets.randbits(12) << 64
    rand_b = secrets.randbits(62)
    timestamp = (unix_ms & ((1 << _TIMESTAMP_BITS) - 1)) << 80
    return UUID(int=timestamp | _VERSION | rand_a | _VARIANT | rand_b)


def uuid7_unix_ms(value: UUID) -> int:
    """The millisecond a UUIDv7 was made at."""
    return value.int >> 80
