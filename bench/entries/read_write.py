"""What tenant resolution costs on the hot path: writes then reads through `TenantMemoryBackend`
against plain `StoreBackend` with a fixed namespace, on the same store, with quotas on (the
database enforces them for both sides alike). `quota_overhead` isolates the quota triggers: the
same backend on a database with them against one without them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

from deepagents.backends import StoreBackend

from bench.harness import Context, Entry, Measurement
from memory import bind_tenant, sql
from memory.tenancy import tenant_namespace

OVERHEAD = Entry(
    "read_write_overhead",
    "N writes then N reads of distinct files",
    "plain StoreBackend (fixed namespace)",
    "<= 1.10",
    lower_is_better=True,
)
QUOTA = Entry(
    "quota_overhead",
    "N writes then N reads of distinct files, quota triggers on",
    "the same backend, quota triggers dropped",
    "<= 1.10",
    lower_is_better=True,
)
ENTRIES = (OVERHEAD, QUOTA)

QUOTAS = {"quota_max_file_bytes": 1 << 20, "quota_max_tenant_bytes": 1 << 34, "quota_max_tenant_files": 1_000_000}
"""Limits no write here reaches: every write runs the whole check."""

CONTENT = "user prefers short answers\nmeetings on tuesdays\n" * 4


STEP = 50
"""Operations per step; the two sides' steps alternate (see `Context.compare_interleaved`)."""


def _writes(backend: StoreBackend, paths: list[str]) -> None:
    for path in paths:
        if backend.write(path, CONTENT).error:
            raise AssertionError(f"write {path} failed")


def _reads(backend: StoreBackend, paths: list[str]) -> None:
    for path in paths:
        if backend.read(path).error:
            raise AssertionError(f"read {path} failed")


def _steps(backend: StoreBackend, paths: list[str]) -> list[Callable[[], None]]:
    """N writes then N reads of the same files, in steps of STEP operations."""
    chunks = [paths[start : start + STEP] for start in range(0, len(paths), STEP)]
    writes = [partial(_writes, backend, chunk) for chunk in chunks]
    reads = [partial(_reads, backend, chunk) for chunk in chunks]
    return [*writes, *reads]


def run(ctx: Context, entries: list[Entry]) -> Iterator[Measurement]:
    operations = ctx.size(1_000, 100)
    paths = [f"/notes/n{index:04d}.md" for index in range(operations)]
    params = {
        "writes": operations,
        "reads": operations,
        "reps": ctx.reps,
        "quotas": QUOTAS,
        "statistic": f"median seconds per round; sides alternate every {STEP} operations",
    }
    with ctx.service("read_write", **QUOTAS) as svc:
        ours = svc.memory_backend()
        if OVERHEAD in entries:
            plain_namespace = tenant_namespace("plain-tenant")
            plain = StoreBackend(namespace=lambda _rt: plain_namespace, store=svc.store)
            with bind_tenant("our-tenant"):
                ctx.progress(f"timing {OVERHEAD.name} ...")
                ours_s, baseline_s = ctx.compare_interleaved(_steps(ours, paths), _steps(plain, paths))
            yield Measurement(OVERHEAD, ours_s, baseline_s, params)
        if QUOTA in entries:
            with ctx.service("read_write_no_quota", **QUOTAS) as bare, bare.pool.connection() as conn:
                for statement in sql.QUOTA_DROP[:3]:  # the triggers; the limits stay configured
                    conn.execute(statement)
                without = bare.memory_backend()
                with bind_tenant("our-tenant"):
                    ctx.progress(f"timing {QUOTA.name} ...")
                    ours_s, baseline_s = ctx.compare_interleaved(_steps(ours, paths), _steps(without, paths))
            yield Measurement(QUOTA, ours_s, baseline_s, params)
