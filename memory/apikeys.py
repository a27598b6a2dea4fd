"""Store API keys: created once (the secret is shown then, only its sha256 is kept), listed, revoked.

A key reaches one tenant's namespaces (those whose first label is the tenant), or every tenant's
with `admin`. The secret is 256 random bits, so a plain sha256 is enough to store it: there is
nothing to brute-force, and a lookup by hash is one index probe per request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from memory import sql
from memory.db import translate
from memory.errors import MemoryServiceError
from memory.tenancy import validate_tenant_id

KEY_PREFIX = "mem_"
"""Every secret starts with this, so a leaked key is easy to recognise (and to scan for)."""

MAX_NAME_LENGTH = 200


class ApiKeyError(MemoryServiceError):
    """The API key operation failed."""


@dataclass(frozen=True)
class ApiKey:
    """A key as listed: never its secret."""

    id: str
    tenant: str
    name: str
    admin: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def reaches(self) -> str:
        return "every tenant" if self.admin else self.tenant

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "admin": self.admin,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class Principal:
    """Who a request is: a tenant's key (reaches namespaces starting with `tenant`) or an admin's."""

    tenant: str
    admin: bool = False
    key_id: str | None = None

    def owns(self, namespace: tuple[str, ...]) -> bool:
        """May this principal write (or read) `namespace`? Admin: any; else its first label is the tenant."""
        return self.admin or (bool(namespace) and namespace[0] == self.tenant)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _row(row: Any) -> ApiKey:
    return ApiKey(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        admin=row["admin"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


def _missing_table(exc: psycopg.Error) -> ApiKeyError:
    return ApiKeyError(str(translate(exc, "API keys")))


def create_key(conn: psycopg.Connection, tenant: str, *, name: str = "", admin: bool = False) -> tuple[ApiKey, str]:
    """A new key for `tenant` (every tenant with `admin`): the stored key and its secret, shown once."""
    validate_tenant_id(tenant, "tenant")
    if len(name) > MAX_NAME_LENGTH or any(ord(ch) < 32 for ch in name):
        raise ApiKeyError(f"--name must be at most {MAX_NAME_LENGTH} printable characters")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    params = {"id": secrets.token_hex(6), "tenant": tenant, "name": name, "admin": admin, "key_hash": hash_secret(secret)}
    try:
        row = conn.execute(sql.API_KEY_INSERT, params).fetchone()
    except psycopg.Error as exc:
        raise _missing_table(exc) from exc
    return _row(row), secret


def list_keys(conn: psycopg.Connection) -> list[ApiKey]:
    """Every key, oldest first, revoked ones included (with `revoked_at`)."""
    try:
        return [_row(row) for row in conn.execute(sql.API_KEY_LIST).fetchall()]
    except psycopg.Error as exc:
        raise _missing_table(exc) from exc


def revoke_key(conn: psycopg.Connection, key_id: str) -> ApiKey:
    """Revoke key `key_id` (idempotent: a revoked key keeps its first revocation time)."""
    try:
        row = conn.execute(sql.API_KEY_REVOKE, {"id": key_id}).fetchone()
    except psycopg.Error as exc:
        raise _missing_table(exc) from exc
    if row is None:
        raise ApiKeyError(f"no API key with id {key_id!r}; `memory keys list` shows the ids")
    return _row(row)


def authenticate(conn: psycopg.Connection, secret: str) -> Principal | None:
    """The principal of a live key with this secret (stamping its last use), or None."""
    if not secret.startswith(KEY_PREFIX):
        return None
    row = conn.execute(sql.API_KEY_AUTHENTICATE, {"key_hash": hash_secret(secret)}).fetchone()
    if row is None:
        return None
    return Principal(tenant=row["tenant"], admin=row["admin"], key_id=row["id"])


async def aauthenticate(conn: psycopg.AsyncConnection, secret: str) -> Principal | None:
    """Async twin of `authenticate`."""
    if not secret.startswith(KEY_PREFIX):
        return None
    return await aauthenticate_hash(conn, hash_secret(secret))


async def aauthenticate_hash(conn: psycopg.AsyncConnection, key_hash: str) -> Principal | None:
    """`aauthenticate` by the secret's sha256 (what the server uses: it hashes once per request)."""
    cursor = await conn.execute(sql.API_KEY_AUTHENTICATE, {"key_hash": key_hash})
    row = await cursor.fetchone()
    if row is None:
        return None
    return Principal(tenant=row["tenant"], admin=row["admin"], key_id=row["id"])
