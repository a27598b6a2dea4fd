"""Checkpoint pruning: idle threads against `PostgresSaver.delete_thread` per thread, a run with
nothing new against the first run, and how both grow with the data.

1,000,000 checkpoints in 100,000 threads (10 each, one blob and one write per checkpoint), 30% of
the threads idle for 60 days, the rest active within the hour (quick mode: 20,000 in 2,000). The
data is loaded once into a template; every side works on its own copy (CREATE DATABASE ... TEMPLATE).

- `prune_idle_threads_1m`: select and delete the 30,000 idle threads with their blobs and writes.
  Ours: `prune_checkpoints(passes=("idle",))` with `idle_days = 30`: idle threads found along the
  `(checkpoint->>'ts')` index, deleted 1,000 threads per statement. Baseline: what a user of the
  plain saver writes: the newest `ts` per thread over the whole table (there is no timestamp
  column), then `PostgresSaver.delete_thread(thread_id)` for each. Both must leave the same rows.
  `floor_s` in the params: the least any row-level deletion of those threads costs, one bare
  `DELETE ... WHERE thread_id = ANY(ids)` per table with the ids known in advance (untimed), on a
  third copy.
- `prune_noop_1m`: the whole job (idle threads, trimming, orphans) run twice on one copy; the
  first run is a full pass (no high-water mark yet) and deletes the idle threads, the second finds
  nothing written since: ours = the second run (median of 5), baseline = the first (target: the
  second is at most 1/20 of the first, and at most 0.5 s: `second_run_s` in the params).
- `prune_idle_threads_2x`, `prune_noop_2x`: the same on 2,000,000 checkpoints in 200,000 threads,
  ours at 2x / ours at 1x (<= 2.2: linear or better).

Full size runs once (each side needs its own copy of 1M rows in each of three tables); quick mode
repeats `--reps` times and takes medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg.rows import dict_row

from bench.harness import Context, Entry, Measurement
from bench import sql as bench_sql
from jobs.checkpoint_pruning import DEFAULT_THREAD_BATCH_SIZE, PASSES, PrunePolicy, prune_checkpoints
from memory import MemoryService

IDLE_THREADS = Entry(
    "prune_idle_threads_1m",
    "select and delete 30k idle threads of 100k (1M checkpoints + blobs + writes)",
    "PostgresSaver.delete_thread per thread",
    ">= 10",
)
NOOP = Entry(
    "prune_noop_1m",
    "the whole prune job again on 1M checkpoints with nothing written since the first run",
    "the first run (a full pass deleting 30k idle threads)",
    ">= 20",
)
IDLE_GROWTH = Entry(
    "prune_idle_threads_2x",
    "select and delete 60k idle threads of 200k (2M checkpoints)",
    "ours on 1M checkpoints",
    "<= 2.2",
    lower_is_better=True,
)
NOOP_GROWTH = Entry(
    "prune_noop_2x",
    "the job again with nothing new, on 2M checkpoints",
    "ours on 1M checkpoints",
    "<= 2.2",
    lower_is_better=True,
)
ENTRIES = (IDLE_THREADS, NOOP, IDLE_GROWTH, NOOP_GROWTH)

PER_THREAD = 10
IDLE_DAYS = 30
NOOP_RUNS = 5
POLICY = PrunePolicy(idle_days=IDLE_DAYS, keep_latest=PER_THREAD + 1)


def _load(url: str, threads: int) -> dict[str, int]:
    with MemoryService.open(database_url=url, database_pool_min_size=1, database_pool_max_size=2) as svc:
        svc.setup()
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in bench_sql.BENCH_PRUNE_LOAD:
            conn.execute(statement, {"threads": threads, "per_thread": PER_THREAD})
        conn.execute(bench_sql.BENCH_PRUNE_ANALYZE)
        return conn.cursor(row_factory=dict_row).execute(bench_sql.BENCH_PRUNE_COUNTS).fetchone()


def _ours(url: str, passes: tuple[str, ...] = ("idle",)) -> tuple[float, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        report = prune_checkpoints(conn, POLICY, passes=passes)
        return time.perf_counter() - started, report.counts["idle_threads"]


def _baseline(url: str) -> tuple[float, int]:
    cutoff = (datetime.now(timezone.utc) - timedelta(days=IDLE_DAYS)).isoformat()
    with psycopg.connect(url, autocommit=True) as conn:
        saver = PostgresSaver(conn)
        started = time.perf_counter()
        idle = [row[0] for row in conn.execute(bench_sql.BENCH_PRUNE_BASELINE_SELECT, {"cutoff": cutoff})]
        for thread_id in idle:
            saver.delete_thread(thread_id)
        return time.perf_counter() - started, len(idle)


def _floor(url: str) -> float:
    """The bare deletes of the baseline's idle threads (selected first, untimed) in one transaction."""
    cutoff = (datetime.now(timezone.utc) - timedelta(days=IDLE_DAYS)).isoformat()
    with psycopg.connect(url, autocommit=True) as conn:
        threads = [row[0] for row in conn.execute(bench_sql.BENCH_PRUNE_BASELINE_SELECT, {"cutoff": cutoff})]
        started = time.perf_counter()
        with conn.transaction():
            for statement in bench_sql.BENCH_PRUNE_FLOOR_DELETES:
                conn.execute(statement, {"threads": threads})
        return time.perf_counter() - started


def _remaining(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.cursor(row_factory=dict_row).execute(bench_sql.BENCH_PRUNE_COUNTS).fetchone()


def run(ctx: Context, entries: list[Entry]) -> Iterator[Measurement]:
    threads = ctx.size(100_000, 2_000)
    reps = 1 if not ctx.quick else ctx.reps
    scales = (1, 2) if {IDLE_GROWTH, NOOP_GROWTH} & set(entries) else (1,)
    times: dict[str, list[float]] = {name: [] for name in ("idle", "baseline", "floor", "first", "noop", "idle_2x", "first_2x", "noop_2x")}
    deleted: dict[str, list[int]] = {"ours": [], "baseline": []}
    loaded, left = {}, {}
    for scale in scales:
        suffix = "" if scale == 1 else "_2x"
        with ctx.database(f"prune_src{scale}") as source:
            ctx.progress(f"prune: loading {threads * scale * PER_THREAD:,} checkpoints in {threads * scale:,} threads ...")
            loaded[scale] = _load(ctx.url(source), threads * scale)
            for rep in range(reps):
                with ctx.database("prune_ours", source) as ours_db:
                    ctx.progress(f"prune: {scale}x, rep {rep + 1}/{reps}: ours, idle threads ...")
                    seconds, count = _ours(ctx.url(ours_db))
                    times["idle" + suffix].append(seconds)
                    if scale == 1:
                        deleted["ours"].append(count)
                        left["ours"] = _remaining(ctx.url(ours_db))
                if scale == 1 and IDLE_THREADS in entries:
                    with ctx.database("prune_base", source) as base_db:
                        ctx.progress(f"prune: rep {rep + 1}/{reps}: PostgresSaver.delete_thread x {count:,} ...")
                        seconds, count = _baseline(ctx.url(base_db))
                        times["baseline"].append(seconds)
                        deleted["baseline"].append(count)
                        left["baseline"] = _remaining(ctx.url(base_db))
                    with ctx.database("prune_floor", source) as floor_db:
                        ctx.progress(f"prune: rep {rep + 1}/{reps}: the floor: one bare DELETE per table ...")
                        times["floor"].append(_floor(ctx.url(floor_db)))
                        left["floor"] = _remaining(ctx.url(floor_db))
                with ctx.database("prune_job", source) as job_db:
                    ctx.progress(f"prune: {scale}x, rep {rep + 1}/{reps}: the whole job, then again {NOOP_RUNS} times ...")
                    times["first" + suffix].append(_ours(ctx.url(job_db), PASSES)[0])
                    noop = [_ours(ctx.url(job_db), PASSES)[0] for _ in range(NOOP_RUNS)]
                    times["noop" + suffix].append(statistics.median(noop))
    if any(left[side] != left["ours"] for side in ("baseline", "floor") if side in left):
        raise AssertionError(f"the sides left different rows: {left}")

    def median(name: str) -> float:
        return statistics.median(times[name]) if times[name] else 0.0

    params = {
        "loaded": loaded[1],
        "left": left.get("ours"),
        "idle_share": 0.3,
        "idle_days": IDLE_DAYS,
        "thread_batch_size": DEFAULT_THREAD_BATCH_SIZE,
        "deleted_threads": deleted,
        "idle_s": round(median("idle"), 3),
        "baseline_s": round(median("baseline"), 3),
        "floor_s": round(median("floor"), 3),
        "floor": "the same rows' bare deletes, ids known in advance (untimed), one DELETE per table in one transaction",
        "first_run_s": round(median("first"), 3),
        "second_run_s": round(median("noop"), 4),
        "reps": reps,
        "statistic": "median over reps (the second run: median of 5 runs in a row); each side works on its own copy",
    }
    if len(scales) > 1:
        params.update({"loaded_2x": loaded[2], "idle_2x_s": round(median("idle_2x"), 3),
                       "first_run_2x_s": round(median("first_2x"), 3), "second_run_2x_s": round(median("noop_2x"), 4)})
    figures = {
        IDLE_THREADS.name: ("idle", "baseline"),
        NOOP.name: ("noop", "first"),
        IDLE_GROWTH.name: ("idle_2x", "idle"),
        NOOP_GROWTH.name: ("noop_2x", "noop"),
    }
    for entry in entries:
        ours, baseline = figures[entry.name]
        yield Measurement(entry, median(ours), median(baseline), params)
