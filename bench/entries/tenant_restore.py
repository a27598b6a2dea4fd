"""Restoring one tenant from a full backup, at size.

`tenant_restore_1k_of_1m`: `restore_tenant()` (what `memory backup restore FILE --tenant T --yes` runs:
verify, the archive streamed into a scratch database without indexes, export of the tenant, import in
replace mode, scratch dropped) of one tenant holding 1,000 memory files and 2 threads (20 checkpoints)
from a backup of a 1,000,000-file store (1,000 such tenants; quick: 20,000 files), against a full
`restore_backup()` of the same archive into an empty database (what `memory backup restore FILE
--target URL` runs, migration included). Both read and load every row of the archive once; the
single-tenant restore skips the indexes and constraints and adds a 1,000-file export and import.

`tenant_restore_neighbors_p99`: while the single-tenant restore runs, a client keeps doing put/get of
memory files of OTHER tenants through the store (one op at a time); its p99 latency against the same
client's p99 with nothing else running (same duration). The restore shares the machine's cores
(pg_restore, psql, the server's backends) with that client.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql as pgsql

from bench.entries.backup import CHECKPOINTS_PER_THREAD, ITEMS_PER_TENANT, THREADS_PER_TENANT, _load
from bench.harness import Context, Entry, Measurement
from bench import sql as bench_sql
from memory.backup import create_backup, restore_backup
from memory.db import with_dbname
from memory.tenant_restore import restore_tenant

RESTORE = Entry(
    "tenant_restore_1k_of_1m",
    "memory backup restore --tenant of a 1,000-file tenant from a backup of a 1,000,000-file store",
    "full memory backup restore of the same archive into an empty database",
    "<= 1.2",
    lower_is_better=True,
)
NEIGHBORS = Entry(
    "tenant_restore_neighbors_p99",
    "p99 of other tenants' put/get during the single-tenant restore",
    "p99 of the same put/get client with the server idle",
    "<= 2",
    lower_is_better=True,
)
ENTRIES = (RESTORE, NEIGHBORS)

RESTORED = "t0003"


class _Client:
    """put then get of one memory file of another tenant, in a loop, on its own thread; latencies kept."""

    def __init__(self, store) -> None:
        self.store = store
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            namespace = (f"t{(n % 7) + 10:04d}", "memories")
            key = f"/bench/live-{n % 100}.md"
            start = time.perf_counter()
            self.store.put(namespace, key, {"content": f"live write {n}", "encoding": "utf-8"})
            self.latencies.append(time.perf_counter() - start)
            start = time.perf_counter()
            self.store.get(namespace, key)
            self.latencies.append(time.perf_counter() - start)
            n += 1

    def __enter__(self) -> _Client:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


def run(ctx: Context, entries: list[Entry]) -> Iterator[Measurement]:
    tenants = ctx.size(1_000, 20)
    with ctx.service("tenant_restore") as svc, tempfile.TemporaryDirectory(prefix="memory-bench-trestore-") as tmp:
        ctx.progress(f"tenant restore: loading {tenants * ITEMS_PER_TENANT:,} files ...")
        _load(svc, tenants, ITEMS_PER_TENANT, THREADS_PER_TENANT, CHECKPOINTS_PER_THREAD)
        manifest = create_backup(svc.database_url, Path(tmp))
        archive = Path(tmp) / manifest.file
        imported: list[int] = []

        def ours() -> None:
            plan = restore_tenant(archive, svc.database_url, RESTORED)
            imported.append(plan.imported["items_inserted"])

        def baseline() -> None:
            name = f"bench_full_restore_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(ctx.admin_url, autocommit=True) as conn:
                conn.execute(pgsql.SQL(bench_sql.BENCH_CREATE_DATABASE).format(pgsql.Identifier(name)))
            try:
                start = time.perf_counter()
                restore_backup(archive, with_dbname(ctx.admin_url, name))
                durations.append(time.perf_counter() - start)
            finally:
                with psycopg.connect(ctx.admin_url, autocommit=True) as conn:
                    conn.execute(pgsql.SQL(bench_sql.BENCH_DROP_DATABASE).format(pgsql.Identifier(name)))

        ctx.progress(f"timing {RESTORE.name} (with a put/get client on other tenants) ...")
        ours_times, baseline_times, busy, idle = [], [], [], []
        durations: list[float] = []
        ours()  # warm-up of both sides
        baseline()
        durations.clear()
        for _ in range(ctx.reps):
            with _Client(svc.store) as client:
                start = time.perf_counter()
                ours()
                ours_times.append(time.perf_counter() - start)
            busy.extend(client.latencies)
            baseline()
            baseline_times.append(durations[-1])
            with _Client(svc.store) as client:
                time.sleep(ours_times[-1])
            idle.extend(client.latencies)
        if set(imported) != {ITEMS_PER_TENANT}:
            raise AssertionError(f"{RESTORE.name}: restored {sorted(set(imported))} items, expected {ITEMS_PER_TENANT}")
        params = {
            "store_items": tenants * ITEMS_PER_TENANT,
            "tenants": tenants,
            "tenant_items": ITEMS_PER_TENANT,
            "checkpoints": tenants * THREADS_PER_TENANT * CHECKPOINTS_PER_THREAD,
            "archive_bytes": manifest.size,
            "reps": ctx.reps,
        }
        if RESTORE in entries:
            yield Measurement(
                RESTORE, statistics.median(ours_times), statistics.median(baseline_times),
                {**params, "statistic": "median seconds per restore, sides alternating; the client runs during ours only"},
            )
        if NEIGHBORS in entries:
            yield Measurement(
                NEIGHBORS, p99(busy), p99(idle),
                {**params, "ops_during_restore": len(busy), "ops_idle": len(idle),
                 "median_busy_s": statistics.median(busy), "median_idle_s": statistics.median(idle),
                 "statistic": "p99 seconds of single put/get ops of other tenants, one client"},
            )
