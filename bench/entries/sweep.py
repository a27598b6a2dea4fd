"""TTL sweep: our batched `ttl_cleanup` against `PostgresStore.sweep_ttl()` on identical data.

2,000,000 memory files, 1,000,000 of them expired (every other row, so the expired half is spread
over the whole table); quick mode 40,000 / 20,000. Both sides sweep a fresh copy while one client
does put/get at a steady pace on random keys of the whole table. Three figures per side:
total sweep time, the longest single transaction, and the p99 latency of the client's put/get
issued during the sweep. `sweep_ttl()` is one DELETE (one transaction); ours deletes in batches
of 2,000 rows, each its own transaction taken FOR UPDATE SKIP LOCKED.

The trade: ours takes longer in total (each row is locked, then deleted, one batch statement at a
time: `sweep_total_1m` may be several times the baseline), in exchange for transactions of
milliseconds instead of one as long as the whole sweep, so concurrent writers never queue behind
it (`sweep_longest_tx_1m`, `sweep_put_get_p99_1m`). The longest transaction is one sample, the
worst of 500 batches, so a checkpoint landing on a batch shows in it: runs on this 2-core box
measured 11x to 45x; the target leaves room for that. Full size runs once (each rep reloads 2M
rows); quick mode repeats `--reps` times and takes medians.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg
from langgraph.store.postgres import PostgresStore

from bench.harness import Context, Entry, Measurement
from jobs.ttl_cleanup import DEFAULT_BATCH_SIZE, ttl_cleanup
from memory import MemoryService, sql
from memory.db import CONNECTION_KWARGS
from memory.retention import RetentionPolicy

TOTAL = Entry(
    "sweep_total_1m",
    "delete 1M expired of 2M rows: total time",
    "PostgresStore.sweep_ttl()",
    "<= 10",
    lower_is_better=True,
)
LONGEST_TX = Entry(
    "sweep_longest_tx_1m",
    "delete 1M expired of 2M rows: longest single transaction",
    "PostgresStore.sweep_ttl()",
    ">= 5",
)
P99 = Entry(
    "sweep_put_get_p99_1m",
    "p99 latency of concurrent put/get during the sweep",
    "PostgresStore.sweep_ttl()",
    ">= 10",
)
ENTRIES = (TOTAL, LONGEST_TX, P99)

TENANTS = 200
CLIENT_INTERVAL_S = 0.005
"""The client's pace: one put or get every 5 ms (about 200 operations a second)."""


@dataclass
class Sweep:
    total_s: float
    longest_tx_s: float
    deleted: int
    latencies_s: list[float] = field(default_factory=list)
    batches: int = 1

    @property
    def p99_s(self) -> float:
        if len(self.latencies_s) < 2:
            return max(self.latencies_s, default=0.0)
        return statistics.quantiles(self.latencies_s, n=100, method="inclusive")[98]


class Client(threading.Thread):
    """Put/get of random files on its own connection; keeps (start, latency) of each operation."""

    def __init__(self, url: str, rows: int, seed: int) -> None:
        super().__init__(name="bench-client", daemon=True)
        self.url = url
        self.rows = rows
        self.rng = random.Random(seed)
        self.done = threading.Event()
        self.samples: list[tuple[float, float]] = []

    def run(self) -> None:
        with psycopg.connect(self.url, **CONNECTION_KWARGS) as conn:
            store = PostgresStore(conn)
            operation = 0
            while not self.done.is_set():
                i = self.rng.randint(1, self.rows)
                namespace = (f"t{i % TENANTS:04d}", "memories")
                key = f"/scratch/n{i:08d}.md"
                started = time.perf_counter()
                if operation % 2:
                    store.put(namespace, key, {"content": f"rewritten {i}", "encoding": "utf-8"}, ttl=43200)
                else:
                    store.get(namespace, key, refresh_ttl=False)
                self.samples.append((started, time.perf_counter() - started))
                operation += 1
                time.sleep(CLIENT_INTERVAL_S)

    def during(self, start: float, end: float) -> list[float]:
        return [latency for began, latency in self.samples if start <= began <= end]


def _load(svc: MemoryService, rows: int) -> None:
    with psycopg.connect(svc.database_url, autocommit=True) as conn:
        conn.execute(sql.BENCH_TRUNCATE_STORE)
        conn.execute(sql.BENCH_SWEEP_LOAD, {"rows": rows, "tenants": TENANTS})
        conn.execute(sql.BENCH_VACUUM_STORE)


def _ours(url: str) -> tuple[float, int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        report = ttl_cleanup(conn, RetentionPolicy(), batch_size=DEFAULT_BATCH_SIZE)
    return report.longest_transaction_s, report.counts["items"], report.counts["batches"]


def _baseline(url: str) -> tuple[float, int, int]:
    with psycopg.connect(url, **CONNECTION_KWARGS) as conn:
        started = time.perf_counter()
        deleted = PostgresStore(conn).sweep_ttl()
        return time.perf_counter() - started, deleted, 1


def _sweep(svc: MemoryService, rows: int, seed: int, run: Callable[[str], tuple[float, int, int]]) -> Sweep:
    _load(svc, rows)
    client = Client(svc.database_url, rows, seed)
    client.start()
    time.sleep(0.5)  # the client is warm before the sweep starts
    started = time.perf_counter()
    longest, deleted, batches = run(svc.database_url)
    ended = time.perf_counter()
    client.done.set()
    client.join()
    return Sweep(ended - started, longest, deleted, client.during(started, ended), batches)


def run(ctx: Context, entries: list[Entry]) -> Iterator[Measurement]:
    rows = ctx.size(2_000_000, 40_000)
    reps = 1 if not ctx.quick else ctx.reps
    ours: list[Sweep] = []
    baseline: list[Sweep] = []
    with ctx.service("sweep") as svc:
        for rep in range(reps):
            ctx.progress(f"sweep: {rows:,} rows, rep {rep + 1}/{reps}: ours ...")
            ours.append(_sweep(svc, rows, rep, _ours))
            ctx.progress(f"sweep: {rows:,} rows, rep {rep + 1}/{reps}: PostgresStore.sweep_ttl() ...")
            baseline.append(_sweep(svc, rows, rep, _baseline))

    def median(sweeps: list[Sweep], figure: Callable[[Sweep], float]) -> float:
        return statistics.median(figure(s) for s in sweeps)

    params = {
        "rows": rows,
        "expired": rows // 2,
        "tenants": TENANTS,
        "batch_size": DEFAULT_BATCH_SIZE,
        "reps": reps,
        "ours_deleted": [s.deleted for s in ours],
        "baseline_deleted": [s.deleted for s in baseline],
        "ours_batches": [s.batches for s in ours],
        "client": f"one put or get every {CLIENT_INTERVAL_S * 1000:g} ms on random keys of the whole table",
        "client_ops_during_sweep": {"ours": [len(s.latencies_s) for s in ours], "baseline": [len(s.latencies_s) for s in baseline]},
        "statistic": "median over reps of each figure; each rep sweeps freshly loaded identical data",
        "note": "the client's writes can renew an expired row before a sweep reaches it, so deleted counts may differ slightly",
    }
    figures = {
        TOTAL.name: lambda s: s.total_s,
        LONGEST_TX.name: lambda s: s.longest_tx_s,
        P99.name: lambda s: s.p99_s,
    }
    for entry in entries:
        figure = figures[entry.name]
        yield Measurement(entry, median(ours, figure), median(baseline, figure), params)
