"""Per-tenant quotas: how many files and bytes a tenant may hold, enforced by the database.

`[quota] max_file_bytes`, `max_tenant_bytes`, `max_tenant_files` (0 = unlimited) apply to every
tenant; `[[quota.rules]] tenant = "acme" max_tenant_files = 500` overrides some of them for one
tenant (the others inherit the defaults). `MemoryService.open()` writes them to
`memory_quota_limits`; triggers on `store` (see `sql.QUOTA_CREATE_ADD`) keep each tenant's usage
in `memory_tenant_usage` in the writing statement and refuse a statement that would take a tenant
past a limit. Every writer is limited alike: the memory tools, the HTTP Store API, import, psql.

An item's bytes are its content's UTF-8 bytes plus the rest of its JSON value (a file's
timestamps and encoding, about 90 bytes); an item without string content counts its JSON text.
Expired items count until the cleanup job deletes them. A change that does not grow a tenant's
usage (a delete, an edit that shrinks a file) is never refused, even over a limit.

For callers: `QuotaExceeded.from_error(exc)` turns the database's refusal into our exception
with a message naming the limit and the tenant's usage (None for any other error).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from memory import sql
from memory.errors import ConfigError, InvalidTenantId, MemoryServiceError
from memory.tenancy import validate_tenant_id

LIMITS = ("max_file_bytes", "max_tenant_bytes", "max_tenant_files")
DEFAULT_TENANT = "*"
"""The row of `memory_quota_limits` every tenant without a row of its own gets."""

NEAR_LIMIT_RATIO = 0.9
"""/metrics counts tenants using more than this share of a tenant-wide limit."""


def _fetch(conn: psycopg.Connection, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows as dicts, whatever the connection's row factory."""
    return conn.cursor(row_factory=dict_row).execute(query, params).fetchall()


class QuotaExceeded(MemoryServiceError):
    """The write would take the tenant past one of its quotas; nothing was written."""

    def __init__(self, message: str | None = None, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}

    @classmethod
    def from_error(cls, exc: BaseException) -> QuotaExceeded | None:
        """The quota refusal carried by a database error (None when `exc` is not one)."""
        if not isinstance(exc, psycopg.Error) or exc.sqlstate != sql.QUOTA_SQLSTATE:
            return None
        try:
            detail = json.loads(exc.diag.message_detail or "{}")
        except ValueError:
            detail = {}
        return cls(describe(detail), detail)

    def tool_error(self, path: str) -> str:
        """The message a memory tool returns to the agent."""
        return f"Error: cannot write '{path}': {self}. Nothing was written; delete or shrink memory files first."


def _n(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, (int, float)) else "?"


def describe(detail: dict[str, Any]) -> str:
    """One line naming the limit that was hit and the tenant's usage."""
    tenant, limit = detail.get("tenant", "?"), detail.get("limit", "?")
    files = detail.get("files")
    usage = f"tenant {tenant} holds {_n(files)} file{'' if files == 1 else 's'}, {_n(detail.get('bytes'))} bytes"
    if limit == "max_file_bytes":
        return (
            f"the item {detail.get('item')!r} would be {_n(detail.get('item_bytes'))} bytes, over "
            f"max_file_bytes = {_n(detail.get('max_file_bytes'))} ({usage})"
        )
    if limit == "max_tenant_files":
        return f"tenant {tenant} is at max_tenant_files = {_n(detail.get('max_tenant_files'))} ({usage})"
    if limit == "max_tenant_bytes":
        return (
            f"the write would bring tenant {tenant} to {_n(detail.get('bytes_after'))} bytes, over "
            f"max_tenant_bytes = {_n(detail.get('max_tenant_bytes'))} ({usage})"
        )
    return f"a quota of tenant {tenant} was exceeded ({usage})"


# -- the policy: settings -> rows of memory_quota_limits -----------------------------------------


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 0
    max_tenant_bytes: int = 0
    max_tenant_files: int = 0

    def __post_init__(self) -> None:
        for name in LIMITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"invalid configuration: [quota] {name} is {value!r}; use a whole number >= 0 (0 = unlimited)")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class QuotaPolicy:
    """Default limits, and per-tenant limits (already merged over the defaults)."""

    default: Limits = Limits()
    tenants: tuple[tuple[str, Limits], ...] = ()

    @classmethod
    def build(cls, default: dict[str, int] | None = None, rules: list[dict[str, Any]] = ()) -> QuotaPolicy:
        """From `[quota]` values and rules (dicts with `tenant` and any of the limits)."""
        base = Limits(**(default or {}))
        merged: dict[str, Limits] = {}
        for index, rule in enumerate(rules):
            unknown = sorted(set(rule) - {"tenant", *LIMITS})
            if unknown:
                raise ConfigError(f"invalid configuration: [quota] rules[{index}] has unknown key {unknown[0]!r}")
            try:
                tenant = validate_tenant_id(rule.get("tenant"), "tenant")
            except InvalidTenantId as exc:
                raise ConfigError(f"invalid configuration: [quota] rules[{index}]: {exc}") from None
            if tenant in merged:
                raise ConfigError(f"invalid configuration: [quota] rules[{index}]: tenant {tenant!r} has two rules; keep one")
            given = {name: rule[name] for name in LIMITS if rule.get(name) is not None}
            merged[tenant] = Limits(**{**base.to_dict(), **given})
        return cls(base, tuple(sorted(merged.items())))

    def rows(self) -> list[tuple[str, Limits]]:
        return [(DEFAULT_TENANT, self.default), *self.tenants]

    def limits_for(self, tenant: str) -> Limits:
        return dict(self.tenants).get(tenant, self.default)


def _rows_in_database(conn: psycopg.Connection) -> list[tuple[str, Limits]]:
    rows = _fetch(conn, sql.QUOTA_LIMITS_ALL)
    return [(r["tenant"], Limits(r["max_file_bytes"], r["max_tenant_bytes"], r["max_tenant_files"])) for r in rows]


def apply_policy(conn: psycopg.Connection, policy: QuotaPolicy) -> bool:
    """Make `memory_quota_limits` hold `policy`; False when it already did (or the schema has no
    quota tables yet: `memory db upgrade` first)."""
    if not _fetch(conn, sql.QUOTA_LIMITS_PRESENT)[0]["present"]:
        return False
    wanted = sorted(policy.rows())
    if sorted(_rows_in_database(conn)) == wanted:
        return False
    with conn.transaction():
        conn.execute(sql.QUOTA_LIMITS_CLEAR)
        conn.execute(
            sql.QUOTA_LIMITS_SET,
            {
                "tenants": [tenant for tenant, _ in wanted],
                **{name: [getattr(limits, name) for _, limits in wanted] for name in LIMITS},
            },
        )
    return True


def recount(conn: psycopg.Connection) -> None:
    """Rebuild `memory_tenant_usage` from the rows (after loading rows with the triggers off)."""
    with conn.transaction():
        conn.execute(sql.QUOTA_LOCK_STORE)
        conn.execute(sql.QUOTA_RECOUNT)


# -- usage against limits ----------------------------------------------------------------------


@dataclass(frozen=True)
class TenantQuota:
    tenant: str
    files: int
    bytes: int
    max_file_bytes: int
    max_tenant_bytes: int
    max_tenant_files: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, str, str]]:
        """`(limit, usage, maximum)` for display; maximum "unlimited" for 0."""

        def cap(value: int) -> str:
            return f"{value:,}" if value else "unlimited"

        return [
            ("max_tenant_files", f"{self.files:,} files", cap(self.max_tenant_files)),
            ("max_tenant_bytes", f"{self.bytes:,} bytes", cap(self.max_tenant_bytes)),
            ("max_file_bytes", "per item", cap(self.max_file_bytes)),
        ]


def tenant_quota(conn: psycopg.Connection, tenant: str) -> TenantQuota:
    """A tenant's usage and its effective limits."""
    tenant = validate_tenant_id(tenant, "tenant")
    (row,) = _fetch(conn, sql.QUOTA_TENANT, {"tenant": tenant})
    return TenantQuota(tenant, **{key: int(row[key]) for key in ("files", "bytes", *LIMITS)})


def tenants_near_limits(conn: psycopg.Connection, ratio: float = NEAR_LIMIT_RATIO) -> list[tuple[str, str]]:
    """`(tenant, limit)` for each tenant-wide limit a tenant uses more than `ratio` of."""
    return [(r["tenant"], r["limit_name"]) for r in _fetch(conn, sql.QUOTA_NEAR_LIMITS, {"ratio": ratio})]


def near_limits_if_enabled(conn: psycopg.Connection) -> list[tuple[str, str]] | None:
    """`tenants_near_limits`, or None on a database without the quota tables (not migrated)."""
    if not _fetch(conn, sql.QUOTA_LIMITS_PRESENT)[0]["present"]:
        return None
    return tenants_near_limits(conn)
