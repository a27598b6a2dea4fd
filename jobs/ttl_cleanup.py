"""TTL cleanup: delete expired memory items (and their vectors) in bounded batches, per policy.

`ttl_cleanup(conn, policy, now, dry_run)` makes two sweeps, one transaction per batch of at most
`batch_size` rows taken `FOR UPDATE SKIP LOCKED` (SQL in `memory.sql.TTL_BATCH`):

1. *by expiry*: rows whose `expires_at` (set on write from the policy) is at or before `now`,
   walked along the store's expires_at index;
2. *by policy* (when the policy expires anything): rows of memory namespaces whose winning
   rule's TTL has passed since they were last written (or read, with refresh on read), walked
   in primary-key order - how a policy change reaches rows written before it.

Tenants under legal hold are never touched. A batch deletes its items' vectors and the items in
one statement, so a run stopped or killed at any point leaves whole items only, and the next run
picks up what is left. A dry run takes the same rows without locking or deleting, and reports
what a real run would delete now. Every run is recorded in `memory_job_runs`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import psycopg

from jobs import runs
from jobs.report import FAILED, JobReport
from memory import sql
from memory.errors import MemoryServiceError
from memory.retention import RetentionPolicy, refuse_held
from memory.tenancy import MEMORY_SUFFIX, validate_tenant_id

JOB = "ttl_cleanup"
DEFAULT_BATCH_SIZE = 2000
"""Rows per transaction: short enough that writers barely wait, large enough to amortize."""

SWEEPS = ("by_expiry", "by_policy")
"""The two sweeps, in order; each one's count in the report is named after it."""

START: dict[str, Any] = {"after_expires_at": datetime.min.replace(tzinfo=timezone.utc), "after_prefix": "", "after_key": ""}
"""Where each sweep's walk starts (keyset positions before every row)."""


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
    stop: threading.Event | None = None,
    on_batch: Callable[[JobReport], None] | None = None,
) -> JobReport:
    """Delete (or, dry, count) what `policy` says has expired at `now` (default: the database's now).

    `conn` is an autocommit connection (each batch is its own transaction); `tenant` limits the
    run to one tenant; `stop`, when set, ends the run after the batch in progress, recorded as
    failed ("interrupted"). Raises `JobBusy` when another run holds the job's lock.
    """
    if tenant is not None:
        refuse_held(validate_tenant_id(tenant, "tenant"), policy.legal_hold, "ttl-cleanup --tenant")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    try:
        with runs.recorded_run(conn, JOB, dry_run=dry_run) as report:
            if now is None:
                now = runs.fetch_unprepared(conn, sql.DATABASE_NOW, {})[0]["now"]
            report.counts.update({"items": 0, "vectors": 0, "batches": 0})
            has_vectors = bool(runs.fetch_unprepared(conn, sql.STORE_VECTORS_PRESENT, {})[0]["present"])
            params = {"now": now, "tenant": tenant, "batch_size": batch_size, "suffix": suffix, **policy.sql_params()}
            for sweep in SWEEPS if policy.expires_anything else SWEEPS[:1]:
                report.counts.setdefault(sweep, 0)
                statement = sql.TTL_BATCH[(sweep, dry_run, has_vectors)]
                position = dict(START)
                while True:
                    if stop is not None and stop.is_set():
                        report.status = FAILED
                        report.error = (
                            f"interrupted by shutdown after {report.counts['batches']} batches "
                            f"({report.counts['items']} items); the next run finishes the work"
                        )
                        return report
                    rows = _batch(conn, report, statement, {**params, **position}, dry_run=dry_run)
                    if not rows:
                        break
                    report.bump(sweep, sum(row["items"] for row in rows))
                    report.bump("batches")
                    if on_batch is not None:
                        on_batch(report)
                    if rows[0]["taken"] < batch_size:
                        break
                    position = {name: rows[0][name] for name in START}
            return report
    except psycopg.errors.UndefinedTable as exc:
        raise CleanupFailed(
            f"{JOB} failed: {runs.one_line(exc)}; run `memory db upgrade` to create the tables"
        ) from exc
    except psycopg.Error as exc:
        raise CleanupFailed(f"{JOB} failed: {runs.one_line(exc)}") from exc


def _batch(
    conn: psycopg.Connection, report: JobReport, statement: str, params: dict[str, Any], *, dry_run: bool
) -> list[dict[str, Any]]:
    """One transaction: take a batch, delete its vectors and items (or count them, dry), per tenant."""
    started = time.perf_counter()
    with conn.transaction():
        rows = runs.fetch_unprepared(conn, statement, params)
        taken = rows[0]["taken"] if rows else 0
        deleted = sum(row["items"] for row in rows)
        if deleted != taken:  # the rows are locked: anything else is a bug, so roll back
            raise CleanupFailed(f"{JOB}: took {taken} rows but {'counted' if dry_run else 'deleted'} {deleted}; rolled back")
    report.longest_transaction_s = max(report.longest_transaction_s, time.perf_counter() - started)
    for row in rows:
        report.add(row["tenant"], "items", row["items"])
        report.add(row["tenant"], "vectors", row["vectors"])
    return rows
