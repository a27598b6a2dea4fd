"""TTL cleanup: delete expired memory items (and their vectors) in short batches, per policy.

`ttl_cleanup(conn, policy, now, dry_run)` deletes what has expired at `now`:

- *by expiry*: rows whose `expires_at` (set on write from the policy) is at or before `now`;
- *by policy* (when the policy expires anything): rows of memory namespaces whose winning
  rule's TTL has passed since they were last written (or read, with refresh on read) - how a
  policy change reaches rows written before it.

Each batch is one DELETE statement, its own transaction, whose WHERE is the whole criterion
(SQL in `memory.sql.TTL_BATCH`): nothing is locked ahead, and a row a writer renewed meanwhile
no longer matches and stays. The batch deletes its items' vectors in the same statement and
returns what it deleted per tenant, so the counts are exact. A run walks the store one of two
ways (`walk`, default picked per run):

- "heap": slices of the table's blocks, about `batch_size` expired rows each (the slice
  widens or narrows with how many the last one held), the whole table once: the pages the one
  `DELETE ... WHERE expires_at < now()` of `PostgresStore.sweep_ttl()` reads, in short
  transactions. Picked when many rows have expired (at least one per `SPARSE_BLOCKS` blocks)
  and always when the policy expires anything (only a full pass finds rows past a policy TTL);
- "index": `batch_size` rows at a time along the expires_at index, when few have expired, so a
  routine run costs what expired, not the table.

The batches of a real run commit without waiting for the disk; the run's record, committed
normally at the end, flushes them all before the run shows as succeeded (a crash in between
loses only deletions the next run makes again). A batch meeting a row a writer holds gives up
after `LOCK_TIMEOUT` (before any deadlock check could pick the writer), is tried again, then
left for the next run (`skipped_busy`). Tenants under legal hold are never touched. A run stopped
or killed at any point leaves whole items only, and the next run picks up what is left. A dry
run makes the same walk with SELECT in place of DELETE and reports what a real run would
delete now. Every run is recorded in `memory_job_runs`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import psycopg

from jobs import runs
from jobs.registry import Job, plural
from jobs.report import FAILED, JobReport
from memory import sql
from memory.db import translate
from memory.errors import MemoryServiceError
from memory.retention import RetentionPolicy, refuse_held
from memory.tenancy import MEMORY_SUFFIX, validate_tenant_id

JOB = "ttl_cleanup"
DEFAULT_BATCH_SIZE = 10_000
"""Rows per transaction (about: the heap walk's slices hold roughly this many): a few milliseconds
of deleting, so writers barely wait, and few enough transactions that their overhead stays small."""

WALKS = ("heap", "index")

MAX_BLOCKS = 1024
"""The most heap blocks (8 MB) one batch of the heap walk reads, however few rows they hold."""

SPARSE_BLOCKS = 4
"""Fewer expired rows than one per this many blocks: walk the index instead of the heap."""

UNKNOWN_ROWS_PER_BLOCK = 64
"""The first slice's guess when the table has no statistics yet (the next slices size themselves)."""

LOCK_TIMEOUT = "100ms"
BUSY_ATTEMPTS = 3
BUSY_ERRORS = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)

START: dict[str, Any] = {"after_expires_at": datetime.min.replace(tzinfo=timezone.utc), "after_prefix": "", "after_key": ""}
"""Where the index walk starts (a keyset position before every row)."""


class CleanupFailed(MemoryServiceError):
    """The TTL cleanup failed."""


def ttl_cleanup(
    conn: psycopg.Connection,
    policy: RetentionPolicy,
    now: datetime | None = None,
    dry_run: bool = False,  # noqa: FBT001, FBT002
    *,
    tenant: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    suffix: str = MEMORY_SUFFIX,
    walk: str | None = None,
    stop: threading.Event | None = None,
    on_batch: Callable[[JobReport], None] | None = None,
) -> JobReport:
    """Delete (or, dry, count) what `policy` says has expired at `now` (default: the database's now).

    `conn` is an autocommit connection (each batch is its own transaction); `tenant` limits the
    run to one tenant; `walk` forces "heap" or "index" (default: picked per run; the index walk
    cannot apply a policy that expires anything); `stop`, when set, ends the run after the
    batch in progress, recorded as failed ("interrupted"). Raises `JobBusy` when another run
    holds the job's lock.
    """
    if tenant is not None:
        refuse_held(validate_tenant_id(tenant, "tenant"), policy.legal_hold, "ttl-cleanup --tenant")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if walk is not None and walk not in WALKS:
        raise ValueError(f"unknown walk {walk!r}; the walks are {', '.join(WALKS)}")
    if walk == "index" and policy.expires_anything:
        raise ValueError("the index walk finds rows by expires_at only; a policy that expires anything needs walk='heap'")
    try:
        with runs.recorded_run(conn, JOB, dry_run=dry_run) as report:
            if now is None:
                now = runs.fetch_unprepared(conn, sql.DATABASE_NOW, {})[0]["now"]
            report.counts.update({"items": 0, "vectors": 0, "by_expiry": 0, "by_policy": 0, "batches": 0, "skipped_busy": 0})
            has_vectors = bool(runs.fetch_unprepared(conn, sql.STORE_VECTORS_PRESENT, {})[0]["present"])
            cleanup = _Cleanup(conn, report, policy, dry_run, stop, on_batch)
            params = {"now": now, "tenant": tenant, "batch_size": batch_size, "suffix": suffix, **policy.sql_params()}
            size = cleanup.fetch(sql.TTL_TABLE_SIZE, {})[0]
            walk = walk or choose_walk(conn, policy, now, int(size["blocks"]))
            statement = sql.TTL_BATCH[(walk, walk == "heap" and policy.expires_anything, dry_run, has_vectors)]
            with runs.batch_settings(conn, dry_run=dry_run, lock_timeout=LOCK_TIMEOUT):
                if walk == "heap":
                    cleanup.heap_walk(statement, params, int(size["blocks"]), float(size["rows_per_block"]), batch_size)
                else:
                    cleanup.index_walk(statement, params, batch_size)
            return report
    except psycopg.Error as exc:
        raise CleanupFailed(str(translate(exc, f"{JOB} failed"))) from exc


def choose_walk(conn: psycopg.Connection, policy: RetentionPolicy, now: datetime, blocks: int | None = None) -> str:
    """"heap" when the policy expires anything or at least one row per `SPARSE_BLOCKS` blocks has
    expired at `now` (counted along the index, up to that many), else "index"."""
    if policy.expires_anything:
        return "heap"
    if blocks is None:
        blocks = int(runs.fetch_unprepared(conn, sql.TTL_TABLE_SIZE, {})[0]["blocks"])
    cap = max(1, blocks // SPARSE_BLOCKS)
    expired = runs.fetch_unprepared(conn, sql.TTL_EXPIRED_UP_TO, {"now": now, "cap": cap})[0]["expired"]
    return "heap" if expired >= cap else "index"


class _Cleanup:
    """One run's connection and report, shared by the walks."""

    def __init__(
        self,
        conn: psycopg.Connection,
        report: JobReport,
        policy: RetentionPolicy,
        dry_run: bool,  # noqa: FBT001
        stop: threading.Event | None,
        on_batch: Callable[[JobReport], None] | None,
    ) -> None:
        self.conn, self.report, self.policy, self.dry_run = conn, report, policy, dry_run
        self.stop, self.on_batch = stop, on_batch

    def fetch(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return runs.fetch_unprepared(self.conn, query, params)

    def interrupted(self) -> bool:
        if self.stop is None or not self.stop.is_set():
            return False
        self.report.status = FAILED
        self.report.error = (
            f"interrupted by shutdown after {self.report.counts['batches']} batches "
            f"({self.report.counts['items']} items); the next run finishes the work"
        )
        return True

    def batch(self, statement: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """One statement, one transaction; tried again when a writer holds a row, None if it still does."""
        for attempt in range(1, BUSY_ATTEMPTS + 1):
            started = time.perf_counter()
            try:
                rows = self.fetch(statement, params)
            except BUSY_ERRORS:
                if attempt == BUSY_ATTEMPTS:
                    self.report.bump("skipped_busy")
                    return None
                time.sleep(0.05 * attempt)
                continue
            finally:
                elapsed = time.perf_counter() - started
                self.report.longest_transaction_s = max(self.report.longest_transaction_s, elapsed)
            if rows and "per_tenant" in rows[0]:  # the index walk: one row, counts by tenant, where it ended
                row = rows[0]
                counted = [(tenant, *counts) for tenant, counts in row["per_tenant"].items()]
            else:  # the heap walk: counts by namespace
                row = {}
                counted = [(r["prefix"].split(".", 1)[0], r["items"], r["by_expiry"], r["vectors"]) for r in rows]
            deleted = 0
            for tenant, items, by_expiry, vectors in counted:
                self.report.add(tenant, "items", items)
                self.report.add(tenant, "vectors", vectors)
                self.report.bump("by_expiry", by_expiry)
                self.report.bump("by_policy", items - by_expiry)
                deleted += items
            row["deleted"] = deleted
            self.report.bump("batches")
            if self.on_batch is not None:
                self.on_batch(self.report)
            return row
        return None

    def heap_walk(self, statement: str, params: dict[str, Any], blocks: int, rows_per_block: float, batch_size: int) -> None:
        """Block ranges from 0 to the table's end at the start (rows added since are not expired),
        each sized from how many the last one held, to hold about `batch_size` expired rows."""
        step = _clamp(batch_size / (rows_per_block if rows_per_block > 0 else UNKNOWN_ROWS_PER_BLOCK), 1, MAX_BLOCKS)
        lo = 0
        while lo < blocks:
            if self.interrupted():
                return
            hi = lo + step
            row = self.batch(statement, {**params, "lo": f"({lo},0)", "hi": f"({hi},0)"})
            held = row["deleted"] if row is not None else 0
            lo = hi
            wanted = batch_size * step / held if held else step * 4
            step = _clamp(wanted, max(1, step // 4), min(MAX_BLOCKS, step * 4))

    def index_walk(self, statement: str, params: dict[str, Any], batch_size: int) -> None:
        """`batch_size` rows at a time along the expires_at index, from where the last batch ended."""
        position = dict(START)
        while not self.interrupted():
            row = self.batch(statement, {**params, **position})
            if row is None:  # a writer held a row of it: the next run deletes it
                return
            if row["taken"] < batch_size:
                return
            position = {name: row[name] for name in START}


def _clamp(value: float, low: int, high: int) -> int:
    return int(min(max(value, low), high))


# -- registry entry (jobs/registry.py) ------------------------------------------------------------


def _bind(settings: Any, database_url: str | None = None):  # noqa: ARG001 - works on the connection alone
    from functools import partial

    return partial(
        ttl_cleanup, policy=settings.retention_policy(), batch_size=settings.retention_batch_size,
        suffix=settings.namespace_suffix,
    )


def summary(report: JobReport) -> str:
    counts = report.counts
    verb = "would delete" if report.dry_run else "deleted"
    return (
        f"{verb} {plural(counts.get('items', 0), 'memory file')} ({counts.get('by_expiry', 0)} expired, "
        f"{counts.get('by_policy', 0)} past their policy TTL) and {plural(counts.get('vectors', 0), 'vector')} "
        f"in {plural(counts.get('batches', 0), 'batch', 'batches')}"
    )


def done(report: JobReport) -> str:
    return f"{plural(report.counts.get('items', 0), 'file')}, {plural(report.counts.get('vectors', 0), 'vector')}"


def progress(report: JobReport) -> str:
    return f"{JOB}: {plural(report.counts.get('items', 0), 'file')} in {plural(report.counts.get('batches', 0), 'batch', 'batches')}"


SPEC = Job(
    name=JOB,
    schedule_key="ttl_cleanup",
    deletes="memory files past their TTL ([retention]) and their vectors",
    bind=_bind,
    summary=summary,
    done=done,
    progress=progress,
    tenant_columns=("items", "vectors"),
)
