"""TTL sweep: our batched `ttl_cleanup` against `PostgresStore.sweep_ttl()` on identical data.

2,000,000 memory files, 1,000,000 of them expired (every other row, so the expired half is spread
over the whole table); quick mode 40,000 / 20,000. The data is loaded once into a template and
each side sweeps its own fresh copy (CREATE DATABASE ... TEMPLATE) while one client does put/get
at a steady pace on random keys of the whole table. `sweep_ttl()` is one DELETE (one
transaction); ours walks the table in slices of about 10,000 expired rows, one DELETE each.

- `sweep_total_1m`: total time, ours / `sweep_ttl()` (target <= 1.5);
- `sweep_longest_tx_1m`: the longest single transaction, `sweep_ttl()`'s / ours (>= 10): the
  longest is one sample, the worst of ~100 batches;
- `sweep_put_get_p99_1m`: the client's put/get p99 during our sweep / its p99 on an idle copy of
  the same data, measured just before (<= 2); `sweep_ttl()`'s p99 is in the params;
- `sweep_total_2x`: how the cost grows: ours on 4,000,000 rows (2,000,000 expired) / ours on the
  2,000,000 (<= 2.2: linear; quick mode 80,000 / 40,000). `sweep_ttl()`'s own growth is in the params.

Full size runs each side three times (the loads dominate; single runs swung 1.4-1.6x on this machine);
quick mode repeats `--reps` times; both take medians.
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
from bench import sql as bench_sql
from jobs.ttl_cleanup import DEFAULT_BATCH_SIZE, ttl_cleanup
from memory import MemoryService
from memory.db import CONNECTION_KWARGS
from memory.retention import RetentionPolicy

TOTAL = Entry(
    "sweep_total_1m",
    "delete 1M expired of 2M rows: total time",
    "PostgresStore.sweep_ttl()",
    "<= 1.5",
    lower_is_better=True,
)
LONGEST_TX = Entry(
    "sweep_longest_tx_1m",
    "delete 1M expired of 2M rows: longest single transaction",
    "PostgresStore.sweep_ttl()",
    ">= 10",
)
P99 = Entry(
    "sweep_put_get_p99_1m",
    "p99 latency of concurrent put/get during our sweep",
    "the same client on an idle copy",
    "<= 2",
    lower_is_better=True,
)
GROWTH = Entry(
    "sweep_total_2x",
    "delete 2M expired of 4M rows: total time",
    "ours on 1M expired of 2M rows",
    "<= 2.2",
    lower_is_better=True,
)
ENTRIES = (TOTAL, LONGEST_TX, P99, GROWTH)

TENANTS = 200
CLIENT_INTERVAL_S = 0.005
"""The client's pace: one put or get every 5 ms (about 200 operations a second)."""
IDLE_WINDOW_S = 3.0
"""How long the client runs on an idle copy for the idle p99."""


@dataclass
class Sweep:
    total_s: float
    longest_tx_s: float
    deleted: int
    latencies_s: list[float] = field(default_factory=list)
    batches: int = 1
    operations: list[str] = field(default_factory=list)
    """Which operation each latency is of ("put" or "get")."""

    @property
    def p99_s(self) -> float:
        return p99(self.latencies_s)

    def p99_of(self, operation: str) -> float:
        return p99([latency for latency, op in zip(self.latencies_s, self.operations) if op == operation])


def p99(latencies: list[float]) -> float:
    if len(latencies) < 2:
        return max(latencies, default=0.0)
    return statistics.quantiles(latencies, n=100, method="inclusive")[98]


class Client(threading.Thread):
    """Put/get of random files on its own connection; keeps (start, latency) of each operation."""

    def __init__(self, url: str, rows: int, seed: int) -> None:
        super().__init__(name="bench-client", daemon=True)
        self.url = url
        self.rows = rows
        self.rng = random.Random(seed)
        self.done = threading.Event()
        self.samples: list[tuple[float, float, str]] = []

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
                self.samples.append((started, time.perf_counter() - started, "put" if operation % 2 else "get"))
                operation += 1
                time.sleep(CLIENT_INTERVAL_S)

    def during(self, start: float, end: float) -> list[tuple[float, str]]:
        """(latency, operation) of the operations begun between `start` and `end`."""
        return [(latency, operation) for began, latency, operation in self.samples if start <= began <= end]


def _load(ctx: Context, dbname: str, rows: int) -> None:
    with MemoryService.open(database_url=ctx.url(dbname), database_pool_min_size=1, database_pool_max_size=2) as svc:
        svc.setup()
    with psycopg.connect(ctx.url(dbname), autocommit=True) as conn:
        conn.execute(bench_sql.BENCH_SWEEP_LOAD, {"rows": rows, "tenants": TENANTS})
        conn.execute(bench_sql.BENCH_VACUUM_STORE)


def _ours(url: str) -> tuple[float, int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        report = ttl_cleanup(conn, RetentionPolicy(), batch_size=DEFAULT_BATCH_SIZE)
    return report.longest_transaction_s, report.counts["items"], report.counts["batches"]


def _baseline(url: str) -> tuple[float, int, int]:
    with psycopg.connect(url, **CONNECTION_KWARGS) as conn:
        started = time.perf_counter()
        deleted = PostgresStore(conn).sweep_ttl()
        return time.perf_counter() - started, deleted, 1


def _sweep(url: str, rows: int, seed: int, run: Callable[[str], tuple[float, int, int]] | None) -> Sweep:
    """`run` on `url` while the client works; with None, the client alone for IDLE_WINDOW_S."""
    client = Client(url, rows, seed)
    client.start()
    time.sleep(0.5)  # the client is warm before the sweep starts
    started = time.perf_counter()
    if run is None:
        time.sleep(IDLE_WINDOW_S)
        longest, deleted, batches = 0.0, 0, 0
    else:
        longest, deleted, batches = run(url)
    ended = time.perf_counter()
    client.done.set()
    client.join()
    samples = client.during(started, ended)
    return Sweep(ended - started, longest, deleted, [latency for latency, _ in samples], batches, [op for _, op in samples])


FULL_SIZE_REPS = 3


def run(ctx: Context, entries: list[Entry]) -> Iterator[Measurement]:
    rows = ctx.size(2_000_000, 40_000)
    reps = ctx.reps if ctx.quick else FULL_SIZE_REPS
    sides: dict[str, list[Sweep]] = {"ours": [], "baseline": [], "idle": [], "ours_2x": [], "baseline_2x": []}
    for scale in (1, 2) if GROWTH in entries else (1,):
        suffix = "" if scale == 1 else "_2x"
        with ctx.database(f"sweep_src{scale}") as source:
            ctx.progress(f"sweep: loading {rows * scale:,} rows ...")
            _load(ctx, source, rows * scale)
            for rep in range(reps):
                plan = [("ours", _ours), ("baseline", _baseline)] + ([("idle", None)] if scale == 1 else [])
                for side, work in plan if rep % 2 == 0 else plan[::-1]:
                    with ctx.database("sweep", source) as copy:
                        ctx.progress(f"sweep: {rows * scale:,} rows, rep {rep + 1}/{reps}: {side} ...")
                        sides[side + suffix if side != "idle" else side].append(_sweep(ctx.url(copy), rows * scale, rep, work))

    def median(side: str, figure: Callable[[Sweep], float]) -> float:
        return statistics.median(figure(s) for s in sides[side]) if sides[side] else 0.0

    params = {
        "rows": rows,
        "expired": rows // 2,
        "tenants": TENANTS,
        "batch_size": DEFAULT_BATCH_SIZE,
        "reps": reps,
        "ours_deleted": [s.deleted for s in sides["ours"]],
        "baseline_deleted": [s.deleted for s in sides["baseline"]],
        "ours_batches": [s.batches for s in sides["ours"]],
        "ours_total_s": round(median("ours", lambda s: s.total_s), 3),
        "baseline_total_s": round(median("baseline", lambda s: s.total_s), 3),
        "ours_p99_ms": round(median("ours", lambda s: s.p99_s) * 1000, 2),
        "idle_p99_ms": round(median("idle", lambda s: s.p99_s) * 1000, 2),
        "baseline_p99_ms": round(median("baseline", lambda s: s.p99_s) * 1000, 2),
        "p99_ms_by_operation": {
            side: {op: round(median(side, lambda s, op=op: s.p99_of(op)) * 1000, 2) for op in ("put", "get")}
            for side in ("ours", "idle")
        },
        "client": f"one put or get every {CLIENT_INTERVAL_S * 1000:g} ms on random keys of the whole table",
        "client_ops": {side: [len(s.latencies_s) for s in sweeps] for side, sweeps in sides.items() if sweeps},
        "statistic": "median over reps of each figure; each side sweeps its own copy of the same loaded data",
        "note": "the client's writes can renew an expired row before a sweep reaches it, so deleted counts may differ slightly",
    }
    if sides["ours_2x"]:
        params["ours_2x_total_s"] = round(median("ours_2x", lambda s: s.total_s), 3)
        params["baseline_2x_total_s"] = round(median("baseline_2x", lambda s: s.total_s), 3)
        params["baseline_growth"] = round(params["baseline_2x_total_s"] / max(params["baseline_total_s"], 1e-9), 3)
    figures = {
        TOTAL.name: (lambda: median("ours", lambda s: s.total_s), lambda: median("baseline", lambda s: s.total_s)),
        LONGEST_TX.name: (lambda: median("ours", lambda s: s.longest_tx_s), lambda: median("baseline", lambda s: s.longest_tx_s)),
        P99.name: (lambda: median("ours", lambda s: s.p99_s), lambda: median("idle", lambda s: s.p99_s)),
        GROWTH.name: (lambda: median("ours_2x", lambda s: s.total_s), lambda: median("ours", lambda s: s.total_s)),
    }
    for entry in entries:
        ours, baseline = figures[entry.name]
        yield Measurement(entry, ours(), baseline(), params)
