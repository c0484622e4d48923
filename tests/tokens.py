"""Bearer tokens for tests, signed like the platform's identity service signs them."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jwt

from app.domain.access import PUBLISH, READ, WRITE

TEST_SECRET = "test-secret-with-enough-entropy-for-hs256-0123456789"
UNSUBSCRIBE_SECRET = "test-unsubscribe-key-0123456789"
ALL_SCOPES = (READ, WRITE, PUBLISH)


def make_token(
    *,
    scopes: Sequence[str] = ALL_SCOPES,
    brands: Sequence[str] = ("brand-a",),
    sub: str = "service:test",
    expires_in: int = 3600,
    secret: str = TEST_SECRET,
    algorithm: str = "HS256",
    kid: str | None = None,
    **claims: object,
) -> str:
    payload = {
        "sub": sub,
        "scope": " ".join(scopes),
        "brands": list(brands),
        "exp": int(time.time()) + expires_in,
        **claims,
    }
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def bearer(**kwargs: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(**kwargs)}"}  # type: ignore[arg-type]
