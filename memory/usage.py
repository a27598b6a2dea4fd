"""How much memory each tenant holds."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from memory import sql


@dataclass(frozen=True)
class TenantUsage:
    tenant: str
    files: int
    bytes: int


def memory_usage(conn: psycopg.Connection, suffix: str = "memories") -> list[TenantUsage]:
    rows = conn.execute(sql.MEMORY_USAGE_BY_TENANT, {"suffix_like": f"%.{suffix}"}).fetchall()
    return [TenantUsage(row["tenant"], row["files"], row["bytes"]) for row in rows]
