"""Bearer JWT authentication and OAuth-2-style scopes.

Litestar's `JWTAuth(scopes=...)` is about ASGI connection types, not OAuth scopes: the
token's `scope` claim lives on `AccessToken` and guards made by `requires` enforce it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token
from litestar.types import Guard

from app.core.settings import Settings
from app.http.jwks import JwksKeys

BEARER_SCHEME = "BearerToken"
"""Name of the security scheme in the OpenAPI document."""

# Providers authenticate by signing their requests (app/http/routes/providers.py), not by
# token; an unsubscribe link by the token in its path (app/http/routes/unsubscribe.py).
PUBLIC_PATHS = [
    "^/healthz$",
    "^/readyz$",
    "^/metrics$",
    "^/schema",
    "^/v1/messaging/providers/",
    "^/v1/messaging/unsubscribe/",
]


@dataclass
class AccessToken(Token):
    scope: str = ""
    """Space-separated scopes, OAuth 2 style."""
    brands: list[str] = field(default_factory=list)
    """Brands the caller may act for; ["*"] is every brand."""

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.scope.split())

    @property
    def all_brands(self) -> bool:
        return "*" in self.brands

    def may_act_for(self, brand_id: str) -> bool:
        return self.all_brands or brand_id in self.brands

    @classmethod
    def decode_payload(cls, *args: Any, **kwargs: Any) -> Any:
        payload = super().decode_payload(*args, **kwargs)
        # The contract requires only `exp`; Litestar's Token also wants an `iat` that is
        # not in the future. Tolerate its absence and small clock skew between issuers.
        now = int(time.time())
        if not isinstance(payload.get("iat"), int | float) or payload["iat"] > now:
            payload["iat"] = now
        # Checked here, not left to a lenient conversion: a `brands` string would make
        # `brand_id in brands` a substring test, and "*x" would mean every brand.
        brands, scope = payload.get("brands", []), payload.get("scope", "")
        if not isinstance(brands, list) or not all(isinstance(b, str) for b in brands):
            raise NotAuthorizedException("Invalid token: brands must be an array of strings")
        if not isinstance(scope, str):
            raise NotAuthorizedException("Invalid token: scope must be a string")
        return payload


def requires(scope: str) -> Guard:
    """A guard that lets a request through only if its token carries `scope`."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        # async: Litestar runs a sync guard in a thread, which costs more than the check.
        token = connection.auth
        if not isinstance(token, AccessToken) or scope not in token.scopes:
            raise PermissionDeniedException(
                f"This token lacks the {scope} scope", extra={"required_scope": scope}
            )

    return guard


async def _caller(token: AccessToken, _: ASGIConnection[Any, Any, Any, Any]) -> str:
    return token.sub


class JwksAuthenticationMiddleware(JWTAuthenticationMiddleware):
    """Litestar's JWT middleware, verifying each token with the JWKS key its `kid` names."""

    def __init__(self, *, jwks: JwksKeys, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.jwks = jwks

    async def authenticate_token(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        key = await self.jwks.key_for(encoded_token)
        token = self.token_cls.decode(
            encoded_token=encoded_token,
            # PyJWT verifies with a PyJWK (and only with its own algorithm); Litestar's
            # annotation says str because it only ever passes a secret.
            secret=cast(str, key),
            algorithm=key.algorithm_name,
            audience=self.token_audience,
            issuer=self.token_issuer,
            require_claims=self.require_claims,
        )
        return AuthenticationResult(
            user=await _caller(cast(AccessToken, token), connection), auth=token
        )


@dataclass
class JwksAuth(JWTAuth[str, AccessToken]):
    """JWTAuth whose keys come from a JWKS (`token_secret` is then unused)."""

    jwks: JwksKeys | None = None
    authentication_middleware_class: type[JWTAuthenticationMiddleware] = (
        JwksAuthenticationMiddleware
    )

    @property
    def middleware(self) -> DefineMiddleware:
        define = super().middleware
        define.kwargs["jwks"] = self.jwks
        return define


def build_jwt_auth(settings: Settings, jwks: JwksKeys | None = None) -> JWTAuth[str, AccessToken]:
    """Tokens verified with `jwks` when given (JWT_JWKS_URL), else with the configured key."""
    common: dict[str, Any] = {
        "token_cls": AccessToken,
        "retrieve_user_handler": _caller,
        "require_claims": ["exp"],
        "accepted_issuers": [settings.jwt_issuer] if settings.jwt_issuer else None,
        "accepted_audiences": [settings.jwt_audience] if settings.jwt_audience else None,
        "exclude": PUBLIC_PATHS,
        "openapi_security_scheme_name": BEARER_SCHEME,
        "description": "Bearer JWT with claims sub, scope (space-separated), brands and exp.",
    }
    if jwks is not None:
        return JwksAuth(token_secret="", jwks=jwks, **common)
    key = settings.jwt_key
    if key is None:
        raise ValueError("no JWT key configured")
    return JWTAuth[str, AccessToken](token_secret=key, algorithm=settings.jwt_algorithm, **common)
