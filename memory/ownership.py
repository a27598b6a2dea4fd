"""Thread ownership: which tenant owns a checkpoint thread, claimed on its first write (here only).

The claim itself is the database function `memory_claim_thread` (sql.OWNERSHIP_CLAIM_FUNCTION),
which the saver queues in front of each write; this module checks reads and translates refusals.

`memory_threads` holds one row per thread: its owning tenant, or NULL for a thread the upgrade
could not attribute (see the thread_ownership migration). The checkpoint tables reference it, so a
thread cannot exist without an owner row. Errors name the thread, never the other tenant.
"""

from __future__ import annotations

from typing import Any

import psycopg

from memory import sql
from memory.errors import ThreadAccessDenied

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
    """True when the tenant owns the thread, False when the thread is new; else the error."""
    row = rows[0]
    if not row["owned"]:
        if row["written"]:
            raise _denied(thread_id, None)  # rows written around the saver: nobody's until assigned
        return False
    if row["tenant"] != tenant:
        raise _denied(thread_id, row["tenant"])
    return True


def check(conn: psycopg.Connection, thread_id: str, tenant: str) -> bool:
    """Whether `tenant` owns the thread (False: the thread is new); another owner raises."""
    return _checked(thread_id, tenant, conn.execute(sql.OWNERSHIP_OWNER, {"thread_id": thread_id}).fetchall())


async def acheck(conn: psycopg.AsyncConnection, thread_id: str, tenant: str) -> bool:
    """Async twin of `check`."""
    cursor = await conn.execute(sql.OWNERSHIP_OWNER, {"thread_id": thread_id})
    return _checked(thread_id, tenant, await cursor.fetchall())


CLAIM_REFUSED = "MT001"
"""SQLSTATE `memory_claim_thread` raises with: another tenant owns the thread (detail: 'unattributed'
when nobody does)."""


def refusal(exc: psycopg.Error, thread_id: str) -> ThreadAccessDenied | None:
    """A refused claim as `ThreadAccessDenied`; None for any other driver error."""
    if exc.sqlstate != CLAIM_REFUSED:
        return None
    unowned = exc.diag.message_detail == "unattributed"
    return _denied(thread_id, None if unowned else "")


def unattributed(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Threads nobody owns: id, created_at, checkpoints, the tenants their metadata names."""
    return conn.execute(sql.OWNERSHIP_UNATTRIBUTED).fetchall()


def assign(conn: psycopg.Connection, thread_id: str, tenant: str) -> bool:
    """Give an unattributed thread its owner (admin); False when the thread is not unattributed."""
    return conn.execute(sql.OWNERSHIP_ASSIGN, {"thread_id": thread_id, "tenant": tenant}).fetchone() is not None
