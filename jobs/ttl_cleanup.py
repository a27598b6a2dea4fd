"""TTL cleanup: delete expired memory items (and their vectors) in bounded batches, per policy.

`ttl_cleanup(conn, policy, now, dry_run)` makes two sweeps over the store, each in primary-key
order, one transaction per batch of at most `batch_size` rows taken `FOR UPDATE SKIP LOCKED`:

1. *expiry*: rows whose `expires_at` (set on write from the policy) is at or before `now`;
2. *policy*: rows of memory namespaces whose winning rule's TTL has passed since they were last
   written (or read, with refresh on read) - how a policy change reaches existing rows.

Tenants under legal hold are never touched. A batch deletes its items' vectors and then the
items in one transaction, so a run stopped or killed at any point leaves whole items only, and
the next run picks up what is left. A dry run walks the same batches, deletes nothing, and
reports what a real run would delete now. Every run is recorded in `memory_job_runs`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from jobs import runs
from jobs.report import FAILED, JobReport
from memory import sql
from memory.errors import MemoryServiceError
from memory.retention import RetentionPolicy
from memory.tenancy import MEMORY_SUFFIX, validate_tenant_id

JOB = "ttl_cleanup"
DEFAULT_BATCH_SIZE = 2000
"""Rows per transaction: short enough that writers barely wait, large enough to amortize."""

SWEEPS: tuple[tuple[str, str, str], ...] = (
    ("by_expiry", sql.TTL_EXPIRED_BATCH, sql.TTL_EXPIRED_LOCK_BATCH),
    ("by_policy", sql.TTL_POLICY_BATCH, sql.TTL_POLICY_LOCK_BATCH),
)
"""(count name, dry-run query, locking query) of each sweep, in order."""


class CleanupFailed(MemoryServiceError):
    """The TTL cleanup failed."""


def _fetch(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else []


def ttl_cleanup(
    conn: psycopg.Connection,
    policy: RetentionPolicy,
    now: datetime | None = None,
    dry_run: bool = False,  # noqa: FBT001, FBT002
    *,
    tenant: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    suffix: str = MEMORY_SUFFIX,
    stop: threading.Event | None = None,
    on_batch: Callable[[JobReport], None] | None = None,
) -> JobReport:
    """Delete (or, dry, count) what `policy` says has expired at `now` (default: the database's now).

    `conn` is an autocommit connection (each batch is its own transaction); `tenant` limits the
    run to one tenant; `stop`, when set, ends the run after the batch in progress, recorded as
    failed ("interrupted"). Raises `JobBusy` when another run holds the job's lock.
    """
    if tenant is not None:
        validate_tenant_id(tenant, "tenant")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    try:
        with runs.recorded_run(conn, JOB, dry_run=dry_run) as report:
            if now is None:
                now = _fetch(conn, sql.DATABASE_NOW, {})[0]["now"]
            report.counts.update({"items": 0, "vectors": 0, "batches": 0})
            has_vectors = bool(_fetch(conn, sql.STORE_VECTORS_PRESENT, {})[0]["present"])
            params = {"now": now, "tenant": tenant, "batch_size": batch_size, "suffix": suffix, **policy.sql_params()}
            sweeps = SWEEPS if policy.expires_anything else SWEEPS[:1]
            for name, dry_query, lock_query in sweeps:
                report.counts.setdefault(name, 0)
                after = ("", "")
                while True:
                    if stop is not None and stop.is_set():
                        report.status = FAILED
                        report.error = (
                            f"interrupted by shutdown after {report.counts['batches']} batches "
                            f"({report.counts['items']} items); the next run finishes the work"
                        )
                        return report
                    rows = _batch(
                        conn,
                        report,
                        dry_query if dry_run else lock_query,
                        {**params, "after_prefix": after[0], "after_key": after[1]},
                        dry_run=dry_run,
                        has_vectors=has_vectors,
                    )
                    if not rows:
                        break
                    report.bump(name, len(rows))
                    report.bump("batches")
                    if on_batch is not None:
                        on_batch(report)
                    if len(rows) < batch_size:
                        break
                    after = (rows[-1]["prefix"], rows[-1]["key"])
            return report
    except psycopg.errors.UndefinedTable as exc:
        raise CleanupFailed(
            f"{JOB} failed: {runs.one_line(exc)}; run `memory db upgrade` to create the tables"
        ) from exc
    except psycopg.Error as exc:
        raise CleanupFailed(f"{JOB} failed: {runs.one_line(exc)}") from exc


def _batch(
    conn: psycopg.Connection,
    report: JobReport,
    query: str,
    params: dict[str, Any],
    *,
    dry_run: bool,
    has_vectors: bool,
) -> list[dict[str, Any]]:
    """One transaction: take a batch of rows, delete their vectors and them (or count, dry)."""
    started = time.perf_counter()
    vectors: list[dict[str, Any]] = []
    with conn.transaction():
        rows = _fetch(conn, query, params)
        if rows:
            doomed = {"prefixes": [row["prefix"] for row in rows], "keys": [row["key"] for row in rows]}
            if has_vectors:
                vectors = _fetch(conn, sql.TTL_COUNT_BATCH_VECTORS if dry_run else sql.TTL_DELETE_BATCH_VECTORS, doomed)
            if not dry_run:
                deleted = conn.execute(sql.TTL_DELETE_BATCH_ITEMS, doomed).rowcount
                if deleted != len(rows):  # rows are locked: anything else is a bug, roll back
                    raise CleanupFailed(f"{JOB}: locked {len(rows)} rows but deleted {deleted}; rolled back")
    report.longest_transaction_s = max(report.longest_transaction_s, time.perf_counter() - started)
    for row in rows:
        report.add(row["tenant"], "items")
    for row in vectors:
        report.add(row["tenant"], "vectors", row["vectors"])
    return rows
