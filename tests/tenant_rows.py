"""What a tenant holds, table by table, read with plain SQL (independent of memory.tenants)."""

from __future__ import annotations

import psycopg

TABLES = ("store", "store_vectors", "checkpoints", "checkpoint_blobs", "checkpoint_writes")


def thread_ids(url: str, tenant: str) -> list[str]:
    """The tenant's checkpoint threads (record them before an erasure: blobs and writes have no tenant)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT DISTINCT thread_id FROM checkpoints WHERE metadata->>'assistant_id' = %s ORDER BY 1", (tenant,)
        ).fetchall()
    return [r[0] for r in rows]


def _where(table: str) -> str:
    return "prefix LIKE %(like)s" if table.startswith("store") else "thread_id = ANY(%(threads)s)"


def counts(url: str, tenant: str, threads: list[str]) -> dict[str, int]:
    """Rows of `tenant` (items by prefix, checkpoint rows by `threads`) in every table present."""
    params = {"like": tenant.replace("_", "\\_") + ".%", "threads": threads}
    out = {}
    with psycopg.connect(url) as conn:
        for table in TABLES:
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                continue
            out[table] = conn.execute(f"SELECT count(*) FROM {table} WHERE {_where(table)}", params).fetchone()[0]
    return out


def md5s(url: str, tenant: str, threads: list[str]) -> dict[str, tuple[int, str]]:
    """(rows, md5 of the sorted rows) of `tenant` per table: equal md5s, equal contents."""
    params = {"like": tenant.replace("_", "\\_") + ".%", "threads": threads}
    out = {}
    with psycopg.connect(url) as conn:
        for table in TABLES:
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                continue
            out[table] = tuple(conn.execute(
                f"SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') "
                f"FROM {table} t WHERE {_where(table)}", params,
            ).fetchone())
    return out
