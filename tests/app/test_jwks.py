"""JWT_JWKS_URL: tokens verified with an identity provider's keys, chosen by kid, from a
real local JWKS endpoint."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from app.core.settings import Settings, SettingsError
from app.http.asgi import create_app
from tests.conftest import serving
from tests.fakes.jwks import JwksServer
from tests.helpers import CAMPAIGNS
from tests.jobs.delivery_helpers import until
from tests.tokens import make_token
from tests.waiting import collector_held_off


@dataclass
class SigningKey:
    """A key pair of the identity provider, published in its JWKS under `kid`."""

    kid: str
    algorithm: str
    private: Any

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        family = RSAAlgorithm if self.algorithm == "RS256" else ECAlgorithm
        jwk: dict[str, Any] = family.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, kid: str | None = None) -> str:
        return make_token(secret=self.private, algorithm=self.algorithm, kid=kid or self.kid)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hs256_token(secret: bytes, kid: str) -> str:
    """HS256 by hand: PyJWT refuses to use a public key as an HMAC secret, an attacker does not."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    claims = {
        "sub": "attacker",
        "scope": "messaging:campaigns:read",
        "brands": ["*"],
        "exp": int(time.time()) + 600,
    }
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


def jwks_settings(settings: Settings, idp: JwksServer, **changes: Any) -> Settings:
    return replace(
        settings,
        jwt_secret=None,
        jwt_jwks_url=idp.url,
        cursor_secret="cursor-secret-0123456789abcdef0123456789",
        **changes,
    )


@asynccontextmanager
async def client_of(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app behind a real server: requests run concurrently (the
    AsyncTestClient would run them one after the other)."""
    with serving(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client


async def status(client: httpx.AsyncClient, token: str) -> int:
    return (await client.get(CAMPAIGNS, headers=auth(token))).status_code


async def test_rs256_and_es256_tokens_are_verified_with_the_key_their_kid_names(settings, idp):
    rsa_key, ec_key = SigningKey.rsa("rsa-1"), SigningKey.ec("ec-1")
    idp.keys = [rsa_key.jwk(), ec_key.jwk()]

    async with client_of(jwks_settings(settings, idp)) as client:
        assert await status(client, rsa_key.token()) == 200
        assert await status(client, ec_key.token()) == 200
        # Each key verifies only tokens that name it.
        assert await status(client, rsa_key.token(kid="ec-1")) == 401
        assert await status(client, ec_key.token(kid="rsa-1")) == 401
    assert idp.requests == 1  # fetched once, at start; then cached


async def test_key_rotation_needs_no_restart(settings, idp):
    old, new = SigningKey.rsa("2026-01"), SigningKey.rsa("2026-02")
    idp.keys = [old.jwk()]

    async with client_of(jwks_settings(settings, idp, jwt_jwks_refetch_seconds=0.2)) as client:
        assert await status(client, old.token()) == 200
        await asyncio.sleep(0.25)  # the last fetch is old enough for another

        idp.keys = [new.jwk()]  # the provider rotates: the old key is withdrawn

        assert await status(client, new.token()) == 200
        await asyncio.sleep(0.25)
        assert await status(client, old.token()) == 401
    assert idp.requests == 3  # start, the new kid, the old kid that is no longer there


async def test_an_unknown_kid_is_401_after_one_refetch_at_most_per_interval(settings, idp):
    known, unknown = SigningKey.rsa("known"), SigningKey.rsa("unpublished")
    idp.keys = [known.jwk()]

    # 3 s: the burst and the request after it come within it, with room for a loaded
    # machine's stalls of a second or more.
    async with client_of(jwks_settings(settings, idp, jwt_jwks_refetch_seconds=3.0)) as client:
        assert await status(client, known.token()) == 200
        await asyncio.sleep(3.05)

        burst = [client.get(CAMPAIGNS, headers=auth(unknown.token())) for _ in range(20)]
        responses = await asyncio.gather(*burst)
        assert {r.status_code for r in responses} == {401}
        assert responses[0].headers["www-authenticate"] == "Bearer"
        assert responses[0].json()["error"] == "unauthorized"
        assert idp.requests == 2  # the 20 requests shared one refetch

        # Within the interval, unknown kids do not reach the provider at all.
        assert await status(client, unknown.token()) == 401
        assert idp.requests == 2


async def test_known_keys_keep_working_while_the_jwks_server_is_down(settings, idp):
    key, newcomer = SigningKey.ec("ec-1"), SigningKey.ec("ec-2")
    idp.keys = [key.jwk()]
    fast = jwks_settings(settings, idp, jwt_jwks_refetch_seconds=0.1, jwt_jwks_max_age_seconds=0.1)

    async with client_of(fast) as client:
        assert await status(client, key.token()) == 200
        idp.stop()
        await asyncio.sleep(0.15)  # the keys are now past their age: a refetch is due

        assert await status(client, key.token()) == 200  # starts a refetch; it fails
        await asyncio.sleep(0.15)
        assert await status(client, key.token()) == 200  # the keys in hand stay
        assert await status(client, newcomer.token()) == 401


async def test_a_hung_jwks_server_does_not_delay_requests_with_known_keys(settings, idp):
    key, newcomer = SigningKey.rsa("rsa-1"), SigningKey.rsa("rsa-2")
    idp.keys = [key.jwk()]
    slow = jwks_settings(settings, idp, jwt_jwks_refetch_seconds=0.1, jwt_jwks_timeout_seconds=6.0)

    async with client_of(slow) as client:
        assert await status(client, key.token()) == 200
        await asyncio.sleep(0.15)
        idp.delay = 60  # the provider now accepts connections and never answers
        started = time.perf_counter()
        waiting = asyncio.create_task(status(client, newcomer.token()))
        await until(lambda: idp.requests == 2)  # the refetch hangs at the provider

        latencies = []
        with collector_held_off():
            for _ in range(10):
                before = time.perf_counter()
                assert await status(client, key.token()) == 200
                latencies.append(time.perf_counter() - before)

        assert not waiting.done()  # the fetch is still hanging meanwhile
        assert await waiting == 401  # given up after the timeout
        waited = time.perf_counter() - started
    # The fetch timeout is 6 s and the provider hangs for 60: the unknown key waited for
    # the timeout, not the provider. A request with a known key takes milliseconds; one
    # that waited for the fetch would take most of its 6 s, and `waiting` would be done.
    # The 6 s leave the 10 requests room for a loaded machine's stalls of a second or more;
    # the bounds sit seconds from both ends.
    assert 5.9 <= waited < 20
    assert max(latencies) < 3.0, latencies


async def test_hs256_signed_with_the_public_key_is_rejected(settings, idp):
    key = SigningKey.rsa("rsa-1")
    idp.keys = [key.jwk()]

    async with client_of(jwks_settings(settings, idp)) as client:
        assert await status(client, key.token()) == 200
        for secret in (key.public_pem(), json.dumps(key.jwk()).encode()):
            assert await status(client, hs256_token(secret, kid="rsa-1")) == 401
        assert await status(client, make_token(kid="rsa-1")) == 401  # HS256, any secret
        unsigned = make_token(secret="", algorithm="none", kid="rsa-1")  # type: ignore[arg-type]
        assert await status(client, unsigned) == 401


def test_jwks_is_the_only_way_to_verify_when_configured(settings):
    url = "http://127.0.0.1:9/jwks.json"
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        create_app(replace(settings, jwt_jwks_url=url, cursor_secret="c" * 32))
    with pytest.raises(SettingsError, match="CURSOR_SECRET"):
        create_app(replace(settings, jwt_secret=None, jwt_jwks_url=url))


def test_jwks_settings_come_from_the_environment():
    env = {"JWT_JWKS_URL": "https://id.example/jwks.json", "JWT_JWKS_TIMEOUT_SECONDS": "0.5"}
    settings = Settings.from_env(env)
    assert settings.jwt_jwks_url == "https://id.example/jwks.json"
    assert settings.jwt_jwks_timeout_seconds == 0.5
    assert settings.jwt_jwks_refetch_seconds == 10.0  # the contract's "once per 10 s"
    assert settings.jwt_key is None
    with pytest.raises(SettingsError, match="JWT_JWKS_REFETCH_SECONDS"):
        Settings.from_env({**env, "JWT_JWKS_REFETCH_SECONDS": "0"})
