"""Idle-thread pruning: our `prune_checkpoints` against `PostgresSaver.delete_thread` per thread.

1,000,000 checkpoints in 100,000 threads (10 each, one blob and one write per checkpoint), 30% of
the threads idle for 60 days, the rest active within the hour (quick mode: 20,000 in 2,000).
Both sides start from byte-identical copies of one loaded database (CREATE DATABASE ... TEMPLATE)
and must select and delete the same 30,000 idle threads with their blobs and writes:

- ours: `prune_checkpoints(passes=("idle",))` with `idle_days = 30`: idle threads found along the
  `(checkpoint->>'ts')` index, deleted 200 threads per transaction. The whole job (plus history
  trimming and orphan collection, full-table scans that find nothing more here) is timed too, on a
  third copy, and saved as `whole_job_s` in the entry's params;
- baseline: what a user of the plain saver writes: the newest `ts` per thread over the whole
  table (there is no timestamp column), then `PostgresSaver.delete_thread(thread_id)` for each.

Full size runs once (a rep needs two fresh copies of 1M rows in each of three tables); quick
mode repeats `--reps` times and takes medians.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from bench.harness import Context, Entry, Measurement
from jobs.checkpoint_pruning import DEFAULT_THREAD_BATCH_SIZE, PASSES, PrunePolicy, prune_checkpoints
from memory import MemoryService, sql
from memory.db import with_dbname

IDLE_THREADS = Entry(
    "prune_idle_threads_1m",
    "select and delete 30k idle threads of 100k (1M checkpoints + blobs + writes)",
    "PostgresSaver.delete_thread per thread",
    ">= 2.5",
)
ENTRIES = (IDLE_THREADS,)

PER_THREAD = 10
IDLE_DAYS = 30


@contextmanager
def _database(ctx: Context, label: str, template: str | None = None) -> Iterator[str]:
    """A scratch database (a copy of `template` when given), dropped afterwards."""
    name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    statement = sql.BENCH_CREATE_DATABASE_FROM if template else sql.BENCH_CREATE_DATABASE
    names = [pgsql.Identifier(name)] + ([pgsql.Identifier(template)] if template else [])
    with psycopg.connect(ctx.admin_url, autocommit=True) as conn:
        conn.execute(pgsql.SQL(statement).format(*names))
    try:
        yield name
    finally:
        with psycopg.connect(ctx.admin_url, autocommit=True) as conn:
            conn.execute(pgsql.SQL(sql.BENCH_DROP_DATABASE).format(pgsql.Identifier(name)))


def _load(url: str, threads: int) -> dict[str, int]:
    with MemoryService.open(database_url=url, database_pool_min_size=1, database_pool_max_size=2) as svc:
        svc.setup()
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in sql.BENCH_PRUNE_LOAD:
            conn.execute(statement, {"threads": threads, "per_thread": PER_THREAD})
        conn.execute(sql.BENCH_PRUNE_ANALYZE)
        return conn.cursor(row_factory=dict_row).execute(sql.BENCH_PRUNE_COUNTS).fetchone()


def _ours(url: str, passes: tuple[str, ...] = ("idle",)) -> tuple[float, int]:
    policy = PrunePolicy(idle_days=IDLE_DAYS, keep_latest=PER_THREAD + 1)
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        report = prune_checkpoints(conn, policy, passes=passes)
        return time.perf_counter() - started, report.counts["idle_threads"]


def _baseline(url: str) -> tuple[float, int]:
    cutoff = (datetime.now(timezone.utc) - timedelta(days=IDLE_DAYS)).isoformat()
    with psycopg.connect(url, autocommit=True) as conn:
        saver = PostgresSaver(conn)
        started = time.perf_counter()
        idle = [row[0] for row in conn.execute(sql.BENCH_PRUNE_BASELINE_SELECT, {"cutoff": cutoff})]
        for thread_id in idle:
            saver.delete_thread(thread_id)
        return time.perf_counter() - started, len(idle)


def _remaining(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.cursor(row_factory=dict_row).execute(sql.BENCH_PRUNE_COUNTS).fetchone()


def run(ctx: Context, entries: list[Entry]) -> Iterator[Measurement]:
    threads = ctx.size(100_000, 2_000)
    reps = 1 if not ctx.quick else ctx.reps
    ours_s, baseline_s, whole_job_s, deleted, left = [], [], [], {"ours": [], "baseline": []}, {}
    with _database(ctx, "prune_src") as source:
        ctx.progress(f"prune: loading {threads * PER_THREAD:,} checkpoints in {threads:,} threads ...")
        loaded = _load(with_dbname(ctx.admin_url, source), threads)
        for rep in range(reps):
            with _database(ctx, "prune_ours", source) as ours_db, _database(ctx, "prune_base", source) as base_db:
                ctx.progress(f"prune: rep {rep + 1}/{reps}: ours ...")
                seconds, count = _ours(with_dbname(ctx.admin_url, ours_db))
                ours_s.append(seconds)
                deleted["ours"].append(count)
                ctx.progress(f"prune: rep {rep + 1}/{reps}: PostgresSaver.delete_thread x {count:,} ...")
                seconds, count = _baseline(with_dbname(ctx.admin_url, base_db))
                baseline_s.append(seconds)
                deleted["baseline"].append(count)
                left = {"ours": _remaining(with_dbname(ctx.admin_url, ours_db)),
                        "baseline": _remaining(with_dbname(ctx.admin_url, base_db))}
            with _database(ctx, "prune_job", source) as job_db:
                ctx.progress(f"prune: rep {rep + 1}/{reps}: the whole job (idle, trim, orphans) ...")
                whole_job_s.append(_ours(with_dbname(ctx.admin_url, job_db), PASSES)[0])
    if left["ours"] != left["baseline"]:
        raise AssertionError(f"the two sides left different rows: {left}")
    params = {
        "loaded": loaded,
        "left": left["ours"],
        "idle_share": 0.3,
        "idle_days": IDLE_DAYS,
        "thread_batch_size": DEFAULT_THREAD_BATCH_SIZE,
        "deleted_threads": deleted,
        "whole_job_s": round(statistics.median(whole_job_s), 3),
        "whole_job": "the same run with history trimming and orphan collection too (full-table scans; nothing more to delete here)",
        "reps": reps,
        "statistic": "median over reps; each side works on its own fresh copy of the same loaded database",
    }
    for entry in entries:
        yield Measurement(entry, statistics.median(ours_s), statistics.median(baseline_s), params)
