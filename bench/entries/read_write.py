"""What tenant resolution costs on the hot path: writes then reads through `TenantMemoryBackend`
against plain `StoreBackend` with a fixed namespace, on the same store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

from deepagents.backends import StoreBackend

from bench.harness import Context, Entry, Measurement
from memory import bind_tenant
from memory.tenancy import tenant_namespace

OVERHEAD = Entry(
    "read_write_overhead",
    "N writes then N reads of distinct files",
    "plain StoreBackend (fixed namespace)",
    "<= 1.10",
    lower_is_better=True,
)
ENTRIES = (OVERHEAD,)

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
    with ctx.service("read_write") as svc:
        ours = svc.memory_backend()
        plain_namespace = tenant_namespace("plain-tenant")
        plain = StoreBackend(namespace=lambda _rt: plain_namespace, store=svc.store)
        with bind_tenant("our-tenant"):
            ctx.progress(f"timing {OVERHEAD.name} ...")
            ours_s, baseline_s = ctx.compare_interleaved(_steps(ours, paths), _steps(plain, paths))
        yield Measurement(
            OVERHEAD,
            ours_s,
            baseline_s,
            {
                "writes": operations,
                "reads": operations,
                "reps": ctx.reps,
                "statistic": f"median seconds per round; sides alternate every {STEP} operations",
            },
        )
