"""Synthetic memory files, bulk-loaded with COPY straight into the store table."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from psycopg.types.json import Jsonb

from bench import sql as bench_sql
from memory import MemoryService
from memory.db import connection
from memory.tenancy import tenant_namespace

NEEDLE = "release checklist"
"""Text in one file of every hundred (`grep` benchmarks search for it)."""

WORDS = (
    "agent memory prefers concise answers deploy staging review notes customer python postgres "
    "schedule budget invoice meeting follow-up summary decision owner risk metric dashboard"
).split()


def extension(index: int) -> str:
    """5% .json, 20% .txt, the rest .md."""
    if index % 20 == 0:
        return ".json"
    return ".txt" if index % 5 == 1 else ".md"


def file_key(index: int, dirs: int) -> str:
    return f"/d{index % dirs:03d}/note-{index:05d}{extension(index)}"


def file_text(index: int, rng: random.Random) -> str:
    lines = [f"# note {index}"]
    lines += [" ".join(rng.choices(WORDS, k=9)) for _ in range(6)]
    if index % 100 == 42:
        lines.insert(3, f"see the {NEEDLE} before the next deploy")
    return "\n".join(lines) + "\n"


def rows(tenant: str, files: int, dirs: int, start: datetime) -> Iterator[tuple]:
    """One tenant's rows, each with its own updated_at (the order `store.search` sorts by)."""
    prefix = ".".join(tenant_namespace(tenant))
    rng = random.Random(tenant)
    for index in range(files):
        stamp = start + timedelta(milliseconds=index)
        iso = stamp.isoformat()
        value = {"content": file_text(index, rng), "encoding": "utf-8", "created_at": iso, "modified_at": iso}
        yield prefix, file_key(index, dirs), Jsonb(value), stamp, stamp


def load(svc: MemoryService, tenants: list[str], files: int, dirs: int) -> int:
    """COPY `files` files in `dirs` directories for each tenant; returns the rows loaded."""
    start = datetime.now(UTC) - timedelta(days=1)
    count = 0
    with connection(svc.pool) as conn:
        with conn.cursor() as cursor, cursor.copy(bench_sql.BENCH_COPY_STORE) as copy:
            for offset, tenant in enumerate(tenants):
                for row in rows(tenant, files, dirs, start + timedelta(hours=offset)):
                    copy.write_row(row)
                    count += 1
        conn.execute(bench_sql.BENCH_ANALYZE_STORE)
    return count
