"""Thread ownership: which tenant owns a checkpoint thread, claimed on its first write (here only).

`memory_threads` holds one row per thread: its owning tenant, or NULL for a thread the upgrade
could not attribute (see the thread_ownership migration). The checkpoint tables reference it, so a
thread cannot exist without an owner row. Errors name the thread, never the other tenant.
"""

from __future__ import annotations

from typing import Any

import psycopg

from memory import sql
from memory.errors import ThreadAccessDenied

CLAIM_ATTEMPTS = 3
"""A claim racing another tenant's sees no row once (snapshot); asking again settles it."""


def _denied(thread_id: str, owner: str | None) -> ThreadAccessDenied:
    if owner is None:
        return ThreadAccessDenied(
            f"thread {thread_id!r} has no owner (it predates thread ownership and could not be attributed); "
            "an admin can give it one with `memory threads assign`; nothing was read or written"
        )
    return ThreadAccessDenied(
        f"thread {thread_id!r} belongs to another tenant; use another thread_id; nothing was read or written"
    )


def _checked(thread_id: str, tenant: str, rows: list[dict[str, Any]]) -> bool:
    """True when the tenant owns the thread, False when nobody does yet; else the error."""
    if not rows:
        return False
    owner = rows[0]["tenant"]
    if owner != tenant:
        raise _denied(thread_id, owner)
    return True


def check(conn: psycopg.Connection, thread_id: str, tenant: str) -> bool:
    """Whether `tenant` owns the thread (False: the thread is new); another owner raises."""
    return _checked(thread_id, tenant, conn.execute(sql.OWNERSHIP_OWNER, {"thread_id": thread_id}).fetchall())


async def acheck(conn: psycopg.AsyncConnection, thread_id: str, tenant: str) -> bool:
    """Async twin of `check`."""
    cursor = await conn.execute(sql.OWNERSHIP_OWNER, {"thread_id": thread_id})
    return _checked(thread_id, tenant, await cursor.fetchall())


def claim(conn: psycopg.Connection, thread_id: str, tenant: str) -> None:
    """Make `tenant` the owner of a new thread, or check it owns the existing one."""
    params = {"thread_id": thread_id, "tenant": tenant}
    for _ in range(CLAIM_ATTEMPTS):
        if _checked(thread_id, tenant, conn.execute(sql.OWNERSHIP_CLAIM, params).fetchall()):
            return
    raise _denied(thread_id, "")


async def aclaim(conn: psycopg.AsyncConnection, thread_id: str, tenant: str) -> None:
    """Async twin of `claim`."""
    params = {"thread_id": thread_id, "tenant": tenant}
    for _ in range(CLAIM_ATTEMPTS):
        cursor = await conn.execute(sql.OWNERSHIP_CLAIM, params)
        if _checked(thread_id, tenant, await cursor.fetchall()):
            return
    raise _denied(thread_id, "")


def unattributed(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Threads nobody owns: id, created_at, checkpoints, the tenants their metadata names."""
    return conn.execute(sql.OWNERSHIP_UNATTRIBUTED).fetchall()


def assign(conn: psycopg.Connection, thread_id: str, tenant: str) -> bool:
    """Give an unattributed thread its owner (admin); False when the thread is not unattributed."""
    return conn.execute(sql.OWNERSHIP_ASSIGN, {"thread_id": thread_id, "tenant": tenant}).fetchone() is not None
