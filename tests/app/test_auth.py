"""Bearer JWT: 401 for a bad token, 403 without the scope, 404 for another brand."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from litestar.testing import AsyncTestClient

from app.core.settings import Settings, SettingsError
from app.http.asgi import create_app
from tests.helpers import CAMPAIGNS, create_campaign
from tests.tokens import TEST_SECRET, bearer, make_token


def raw_token(**claims: object) -> str:
    """A token with claims exactly as given over sane defaults (no conversion)."""
    payload = {
        "sub": "x",
        "scope": "messaging:campaigns:read",
        "brands": ["brand-a"],
        "exp": int(time.time()) + 60,
        **claims,
    }
    return jwt.encode(payload, TEST_SECRET)


def unknown_campaign() -> str:
    return f"{CAMPAIGNS}/{uuid.uuid4()}"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer not.a.jwt",
        f"Bearer {make_token(expires_in=-60)}",
        f"Bearer {make_token(secret='another-secret-with-enough-entropy-0123456789abcdef')}",
        f"Bearer {jwt.encode({'sub': 'x', 'scope': 'messaging:campaigns:read'}, TEST_SECRET)}",
        f"Bearer {jwt.encode({'scope': 'x', 'exp': int(time.time()) + 60}, TEST_SECRET)}",
        f"Bearer {raw_token(brands='brand-a')}",
        f"Bearer {raw_token(brands='*x')}",
        f"Bearer {raw_token(brands=[1])}",
        f"Bearer {raw_token(scope=['messaging:campaigns:read'])}",
    ],
    ids=[
        "missing",
        "empty",
        "malformed",
        "expired",
        "wrong-key",
        "no-exp",
        "no-sub",
        "brands-string",
        "brands-star-string",
        "brands-not-strings",
        "scope-not-string",
    ],
)
async def test_bad_token_is_401_with_www_authenticate(client, authorization):
    headers = {"Authorization": authorization} if authorization else {}

    response = await client.get(unknown_campaign(), headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "unauthorized"


async def test_token_without_the_scope_is_403(client):
    response = await client.get(unknown_campaign(), headers=bearer(scopes=["other:scope"]))

    assert response.status_code == 403
    assert response.json()["details"] == {"required_scope": "messaging:campaigns:read"}


async def test_health_routes_need_no_token(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_other_brand_is_404(client):
    campaign = await create_campaign(client, brand="brand-b")

    response = await client.get(f"{CAMPAIGNS}/{campaign['id']}", headers=bearer(brands=["brand-a"]))

    assert response.status_code == 404


@pytest.mark.parametrize("sub", ["ann\x00", "ann\ud800"], ids=["NUL", "lone surrogate"])
async def test_a_sub_that_cannot_be_stored_is_a_400_and_writes_nothing(client, db, sub):
    """A signed token may carry any JSON string as its `sub`; the audit trail and the run
    store it, and PostgreSQL takes neither NUL nor a lone surrogate (which has no UTF-8)."""
    token = bearer(sub=sub)
    campaign = await create_campaign(client)

    body = {"brand_id": "brand-a", "name": "n", "channel": "email", "sender": "a@b.c"}
    body |= {"subject": "s", "body": "b"}
    created = await client.post(CAMPAIGNS, json=body, headers=token)
    published = await client.post(
        f"{CAMPAIGNS}/{campaign['id']}/publish",
        json={"recipients": [{"address": "ann@example.com"}]},
        headers=token,
    )

    for answer in (created, published):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "validation_error"
    assert await db.fetchval("SELECT count(*) FROM campaigns") == 1
    assert await db.fetchval("SELECT count(*) FROM runs") == 0


@pytest.mark.parametrize("kind", ["rsa", "ec"])
async def test_public_key_tokens(settings, kind):
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        algorithm = "RS256"
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        algorithm = "ES256"
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    app = create_app(
        replace(settings, jwt_secret=None, jwt_public_key=pem, cursor_secret="cursor-secret")
    )
    async with AsyncTestClient(app=app) as client:
        good = make_token(secret=private, algorithm=algorithm)  # type: ignore[arg-type]
        response = await client.get(unknown_campaign(), headers={"Authorization": f"Bearer {good}"})
        assert response.status_code == 404  # authenticated; the campaign does not exist
        forged = make_token()  # HS256 with a shared secret: not accepted
        response = await client.get(
            unknown_campaign(), headers={"Authorization": f"Bearer {forged}"}
        )
        assert response.status_code == 401


async def test_issuer_and_audience_are_checked_when_configured(settings):
    app = create_app(replace(settings, jwt_issuer="https://id.platform", jwt_audience="messaging"))
    async with AsyncTestClient(app=app) as client:
        right = bearer(iss="https://id.platform", aud="messaging")
        assert (await client.get(unknown_campaign(), headers=right)).status_code == 404
        for wrong in (
            bearer(iss="https://evil", aud="messaging"),
            bearer(aud="messaging"),
            bearer(iss="https://id.platform", aud="billing"),
        ):
            assert (await client.get(unknown_campaign(), headers=wrong)).status_code == 401


def test_web_refuses_to_start_with_a_public_key_and_no_cursor_secret(settings):
    """Cursors are encrypted with CURSOR_SECRET; a public key is no secret to derive it
    from, and a cursor made with it would be a forgeable, readable one."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(SettingsError, match="CURSOR_SECRET"):
        create_app(replace(settings, jwt_secret=None, jwt_public_key=pem))


def test_web_refuses_to_start_without_a_key():
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        create_app(Settings(jwt_secret=None, jwt_public_key=None, dev_mode=False))


async def test_development_mode_starts_without_a_key_and_says_so(settings, caplog):
    app = create_app(replace(settings, jwt_secret=None, dev_mode=True))
    async with AsyncTestClient(app=app) as client:
        assert (await client.get("/healthz")).status_code == 200
    assert "DEVELOPMENT MODE" in caplog.text
