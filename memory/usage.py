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
    """Files and content bytes (UTF-8 of each file's text) of memory per tenant."""
    rows = conn.execute(sql.MEMORY_USAGE_BY_TENANT, {"suffix_like": f"%.{suffix}"}).fetchall()
    return [TenantUsage(row["tenant"], row["files"], row["bytes"]) for row in rows]


async def amemory_usage(conn: psycopg.AsyncConnection, suffix: str = "memories") -> list[TenantUsage]:
    """Async twin of `memory_usage`."""
    cursor = await conn.execute(sql.MEMORY_USAGE_BY_TENANT, {"suffix_like": f"%.{suffix}"})
    return [TenantUsage(row["tenant"], row["files"], row["bytes"]) for row in await cursor.fetchall()]
