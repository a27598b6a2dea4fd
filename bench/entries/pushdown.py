"""ls / glob / grep pushed down into PostgreSQL against plain `StoreBackend`, same store, same data.

One tenant holds N files in D directories; other tenants of the same size share the table.
Before timing, each call's result is checked equal on both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from deepagents.backends import StoreBackend

from bench import data
from bench.harness import Context, Entry, Measurement
from memory import bind_tenant
from memory.tenancy import tenant_namespace

TENANT = "tenant-00"

LS = Entry("ls_10k", "ls of the root and of one directory", "plain StoreBackend.ls", ">= 20")
GLOB = Entry("glob_10k", 'glob("**/*.json") over every directory', "plain StoreBackend.glob", ">= 20")
GREP = Entry("grep_10k", f'grep("{data.NEEDLE}") over every file', "plain StoreBackend.grep", ">= 5")
ENTRIES = (LS, GLOB, GREP)


def _calls(entry: Entry, dirs: int) -> list[Callable[[StoreBackend], object]]:
    middle = f"/d{dirs // 2:03d}/"
    if entry is LS:
        return [lambda backend: backend.ls("/"), lambda backend: backend.ls(middle)]
    if entry is GLOB:
        return [lambda backend: backend.glob("**/*.json")]
    return [lambda backend: backend.grep(data.NEEDLE)]


def _describe(entry: Entry, dirs: int) -> list[str]:
    if entry is LS:
        return ['ls("/")', f'ls("/d{dirs // 2:03d}/")']
    return [entry.description.split(" ", 1)[0]]


def run(ctx: Context, entries: list[Entry]) -> Iterator[Measurement]:
    files, dirs, tenants = ctx.size(10_000, 500), ctx.size(100, 10), ctx.size(10, 3)
    with ctx.service("pushdown") as svc:
        names = [f"tenant-{n:02d}" for n in range(tenants)]
        ctx.progress(f"loading {tenants} tenants x {files} files ...")
        data.load(svc, names, files, dirs)
        namespace = tenant_namespace(TENANT)
        plain = StoreBackend(namespace=lambda _rt: namespace, store=svc.store)
        ours = svc.memory_backend()
        with bind_tenant(TENANT):
            for entry in entries:
                calls = _calls(entry, dirs)
                for call in calls:
                    if call(ours) != call(plain):
                        raise AssertionError(f"{entry.name}: results differ from plain StoreBackend")
                ctx.progress(f"timing {entry.name} ...")
                ours_s, baseline_s = ctx.compare(
                    lambda calls=calls: [call(ours) for call in calls],
                    lambda calls=calls: [call(plain) for call in calls],
                )
                yield Measurement(
                    entry,
                    ours_s,
                    baseline_s,
                    {
                        "files": files,
                        "dirs": dirs,
                        "tenants": tenants,
                        "calls": _describe(entry, dirs),
                        "reps": ctx.reps,
                        "statistic": "median seconds per set of calls",
                    },
                )
