"""The signing keys of an identity provider, from its JWKS document (`JWT_JWKS_URL`).

Requests whose token names a known `kid` never wait on the provider: they read the cached
keys, and nothing they touch is ever held by a fetch. Only a token with an unknown `kid`
waits for a fetch, and all such tokens wait for the same one (single-flight). Fetches are
at least `refetch_seconds` apart, whatever arrives, and take at most `timeout_seconds`;
a fetch that fails keeps the keys in hand (a provider that is down locks nobody out).
Keys older than `max_age_seconds` are refetched in the background, so a key the provider
withdrew stops being accepted without anybody waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
import jwt
from litestar.exceptions import NotAuthorizedException

logger = logging.getLogger(__name__)

ALGORITHMS = frozenset({"RS256", "ES256"})
"""What a JWKS may verify. HS256 never: a public key used as an HMAC secret would let
anybody sign (algorithm confusion)."""


class JwksKeys:
    def __init__(
        self,
        url: str,
        *,
        refetch_seconds: float = 10.0,
        max_age_seconds: float = 300.0,
        timeout_seconds: float = 2.0,
    ) -> None:
        self.url = url
        self.refetch_seconds = refetch_seconds
        self.max_age_seconds = max_age_seconds
        self.timeout_seconds = timeout_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -float("inf")
        """time.monotonic() of the last successful fetch."""
        self._tried_at = -float("inf")
        """time.monotonic() at which the last fetch started, successful or not."""
        self._fetch: asyncio.Task[None] | None = None
        # One client for the process: building one loads the CA bundle (tens of ms of CPU
        # on the event loop, which every request would feel).
        self._http = httpx.AsyncClient(timeout=timeout_seconds, follow_redirects=False)

    def start(self) -> None:
        """Fetch the keys now, in the background, so that the first requests find them."""
        self._fetch_soon()

    async def aclose(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetch
        await self._http.aclose()

    async def key_for(self, encoded_token: str) -> jwt.PyJWK:
        """The key that must have signed the token; 401 if there is none."""
        try:
            header = jwt.get_unverified_header(encoded_token)
        except jwt.InvalidTokenError as exc:
            raise NotAuthorizedException("Invalid token") from exc
        kid, algorithm = header.get("kid"), header.get("alg")
        if algorithm not in ALGORITHMS:
            raise NotAuthorizedException("Invalid token: algorithm not accepted")
        if not isinstance(kid, str):
            raise NotAuthorizedException("Invalid token: no kid")
        key = self._keys.get(kid)
        if key is None:
            await self._refetch()
            key = self._keys.get(kid)
            if key is None:
                raise NotAuthorizedException("Invalid token: unknown signing key")
        elif time.monotonic() - self._fetched_at > self.max_age_seconds:
            self._fetch_soon()  # not awaited: this request goes on with the key in hand
        if key.algorithm_name != algorithm:
            raise NotAuthorizedException("Invalid token: algorithm does not match the key")
        return key

    async def _refetch(self) -> None:
        """Wait for a fetch: the one in flight, or a new one if the last is old enough."""
        self._fetch_soon()
        if self._fetch is not None:
            # Shielded: a client that hangs up must not cancel the fetch the others wait for.
            await asyncio.shield(self._fetch)

    def _fetch_soon(self) -> None:
        if self._fetch is not None and not self._fetch.done():
            return
        if time.monotonic() - self._tried_at < self.refetch_seconds:
            return
        self._tried_at = time.monotonic()
        self._fetch = asyncio.create_task(self._fetch_keys(), name="jwks-fetch")

    async def _fetch_keys(self) -> None:
        """Never raises: a failure is logged and the keys in hand stay."""
        try:
            async with asyncio.timeout(self.timeout_seconds):
                response = await self._http.get(self.url)
            response.raise_for_status()
            keys = usable_keys(response.json())
        except Exception as exc:
            logger.warning(
                "JWKS fetch failed; keeping the %d keys in hand: %r", len(self._keys), exc
            )
            return
        if not keys:
            logger.warning("JWKS has no usable RS256/ES256 signing key; keeping the keys in hand")
            return
        self._keys = keys  # replaced whole: a kid the provider dropped is gone
        self._fetched_at = time.monotonic()
        logger.info("JWKS fetched", extra={"kids": sorted(keys)})


def usable_keys(document: Any) -> dict[str, jwt.PyJWK]:
    """The RS256/ES256 signing keys of a JWKS document, by kid; others are left out."""
    keys: dict[str, jwt.PyJWK] = {}
    entries = document.get("keys") if isinstance(document, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue  # an unsupported key type or curve, or a malformed key
        if key.algorithm_name in ALGORITHMS:
            keys[entry["kid"]] = key
    return keys
