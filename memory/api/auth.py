"""Credentials -> `Principal`, fail closed: no credentials, an unknown, revoked or expired one: 401.

`[api] auth = "keys"` (default): the `x-api-key` header (what `langgraph_sdk` sends for `api_key=`)
holds a key from `memory keys create`, looked up by its sha256 on a pooled connection.
`[api] auth = "jwt"`: a signed token in `x-api-key` or `Authorization: Bearer`, verified with
`jwt_secret` or the public key in `jwt_public_key_file`; the tenant is the `jwt_tenant_claim`
claim, and a token whose `jwt_admin_claim` claim is `true` reaches every tenant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import jwt
import psycopg
from psycopg_pool import AsyncConnectionPool

from memory import apikeys
from memory.api.errors import ApiError, unauthorized, unavailable
from memory.api.keycache import KeyCache
from memory.apikeys import Principal
from memory.errors import ConfigError, InvalidTenantId
from memory.tenancy import validate_tenant_id

POOL_TIMEOUT_S = 5.0


class Authenticator(Protocol):
    async def principal(self, headers: Any) -> Principal: ...


def credential(headers: Any) -> str | None:
    """The token a request carries: `x-api-key`, else `Authorization: Bearer <token>`."""
    if key := headers.get("x-api-key"):
        return key.strip()
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class KeyAuth:
    """API keys in `memory_api_keys`, looked up by the sha256 of the secret.

    With a `KeyCache` (`[api] key_cache_s > 0`, the default), a live key is served from memory
    while the cache's listener hears revocations (see `memory.api.keycache`); otherwise, and
    whenever the listener is not proven to work, every request asks the database.
    """

    def __init__(self, pool: AsyncConnectionPool, cache: KeyCache | None = None) -> None:
        self.pool = pool
        self.cache = cache

    async def start(self) -> None:
        if self.cache is not None:
            await self.cache.start()

    async def stop(self) -> None:
        if self.cache is not None:
            await self.cache.stop()

    async def principal(self, headers: Any) -> Principal:
        secret = credential(headers)
        if not secret:
            raise unauthorized("missing credentials: send an API key in the x-api-key header")
        if not secret.startswith(apikeys.KEY_PREFIX):
            raise unauthorized("invalid or revoked API key")
        key_hash = apikeys.hash_secret(secret)
        if self.cache is None:
            return await self._lookup(key_hash)
        if (cached := self.cache.get(key_hash)) is not None:
            return cached
        generation = self.cache.generation()
        found = await self._lookup(key_hash)
        self.cache.put(key_hash, found, generation)
        return found

    async def _lookup(self, key_hash: str) -> Principal:
        try:
            async with self.pool.connection(timeout=POOL_TIMEOUT_S) as conn:
                found = await apikeys.aauthenticate_hash(conn, key_hash)
        except psycopg.errors.UndefinedTable:
            raise unavailable("memory_api_keys does not exist; run `memory db upgrade`") from None
        except (psycopg.Error, TimeoutError) as exc:
            raise unavailable(f"database unavailable: {type(exc).__name__}") from exc
        if found is None:
            raise unauthorized("invalid or revoked API key")
        return found


class JwtAuth:
    """Signed tokens (pyjwt): `exp` required; `aud` and `iss` checked when configured."""

    def __init__(
        self,
        *,
        secret: str = "",
        public_key_file: str = "",
        algorithms: list[str],
        tenant_claim: str = "tenant",
        admin_claim: str = "",
        audience: str = "",
        issuer: str = "",
    ) -> None:
        if public_key_file:
            try:
                self.key: str = Path(public_key_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"[api] jwt_public_key_file {public_key_file!r}: {exc.strerror or exc}") from exc
        elif secret:
            self.key = secret
        else:
            raise ConfigError('[api] auth = "jwt" needs jwt_secret or jwt_public_key_file')
        self.algorithms = list(algorithms)
        self.tenant_claim = tenant_claim
        self.admin_claim = admin_claim
        self.audience = audience or None
        self.issuer = issuer or None

    @classmethod
    def from_settings(cls, settings: Any) -> JwtAuth:
        return cls(
            secret=settings.api_jwt_secret,
            public_key_file=settings.api_jwt_public_key_file,
            algorithms=settings.api_jwt_algorithms,
            tenant_claim=settings.api_jwt_tenant_claim,
            admin_claim=settings.api_jwt_admin_claim,
            audience=settings.api_jwt_audience,
            issuer=settings.api_jwt_issuer,
        )

    async def principal(self, headers: Any) -> Principal:
        token = credential(headers)
        if not token:
            raise unauthorized("missing credentials: send a token in x-api-key or Authorization: Bearer")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp"]},
            )
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"invalid token: {exc}") from None
        admin = bool(self.admin_claim) and claims.get(self.admin_claim) is True
        tenant = claims.get(self.tenant_claim)
        if admin and tenant is None:
            return Principal(tenant="", admin=True)
        try:
            return Principal(tenant=validate_tenant_id(tenant, f"claim {self.tenant_claim!r}"), admin=admin)
        except InvalidTenantId as exc:
            raise unauthorized(f"invalid token: {exc}") from None


def authenticator(settings: Any, pool: AsyncConnectionPool, url: str) -> Authenticator:
    """The authenticator `[api] auth` names (call `start()`/`stop()` on a `KeyAuth`)."""
    if settings.api_auth == "jwt":
        return JwtAuth.from_settings(settings)
    cache = KeyCache(pool, url, settings.api_key_cache_s) if settings.api_key_cache_s > 0 else None
    return KeyAuth(pool, cache)


__all__ = ["ApiError", "Authenticator", "JwtAuth", "KeyAuth", "KeyCache", "Principal", "authenticator", "credential"]
