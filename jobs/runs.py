"""Job runs: one at a time per job, each recorded in `memory_job_runs`; scheduled ticks once each.

`job_lock(conn, job)` is a transaction-level advisory lock held by an open transaction on a
connection of its own for the whole run: it ends with that transaction, whether the run ends,
the process dies or the connection drops, so it cannot leak into a pooled connection, and
behind PgBouncer's transaction pooling the open transaction pins one server connection, so lock
and release never reach different backends. `claim_tick` inserts `(job, tick)` into
`memory_job_ticks` ON CONFLICT DO NOTHING: the database guarantees each tick runs once.

`recorded_run(conn, job, dry_run=...)` wraps a job's work: it takes the job's lock, marks runs
left 'running' by a dead process as failed, inserts this run as 'running' (committed at once,
so a killed run stays visible), and records the outcome when the work ends.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from jobs.report import FAILED, RUNNING, SUCCEEDED, JobReport
from memory import sql
from memory.errors import MemoryServiceError

logger = logging.getLogger(__name__)

ABANDONED = "abandoned: the process running it ended before it finished; the next run redid its work"


class JobBusy(MemoryServiceError):
    """The job is already running (another replica or command holds its lock); nothing was done, try again later."""


class JobInterrupted(MemoryServiceError):
    """The job was stopped between two batches; the next run finishes the work."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def this_host() -> str:
    """`hostname:pid` of this process, recorded with each run."""
    return f"{socket.gethostname()}:{os.getpid()}"


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def lock_name(job: str) -> str:
    return f"memory:{job}"


def _fetch(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def fetch_unprepared(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows as dicts (none for a statement without any), never from a prepared statement: a job's
    batch statements are planned knowing their arrays and how far along the walk is."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params, prepare=False)
        return cur.fetchall() if cur.description else []


def require_autocommit(conn: psycopg.Connection) -> None:
    if not conn.autocommit:
        raise ValueError(
            "jobs need an autocommit connection (as MemoryService's pool gives), so each batch commits "
            "on its own: psycopg.connect(url, autocommit=True)"
        )


_held: set[tuple[int, str]] = set()
"""(connection id, job) of the locks held in this process: `recorded_run` inside a scheduler tick
reuses the tick's lock on the same connection."""
_held_guard = threading.Lock()

LOCK_CONNECT_TIMEOUT_S = 10


def lock_connection(conn: psycopg.Connection) -> psycopg.Connection:
    """A connection of its own to `conn`'s database (same parameters), never preparing statements."""
    password = conn.info.password
    return psycopg.connect(
        conn.info.dsn,
        **({"password": password} if password else {}),
        autocommit=False,
        prepare_threshold=None,
        connect_timeout=LOCK_CONNECT_TIMEOUT_S,
    )


@contextmanager
def job_lock(conn: psycopg.Connection, job: str) -> Iterator[bool]:
    """Try the job's lock (never waits); yields whether this run holds it.

    The lock is `pg_try_advisory_xact_lock` in a transaction left open on a connection of its own
    until the block ends; closing that connection (or losing it) ends the transaction and the lock.
    """
    key = (id(conn), job)
    with _held_guard:
        nested = key in _held
    if nested:
        yield True
        return
    holder = lock_connection(conn)
    try:
        holder.execute(sql.NO_IDLE_TIMEOUT, prepare=False)
        acquired = bool(holder.execute(sql.JOB_TRY_XACT_LOCK, {"lock_name": lock_name(job)}, prepare=False).fetchone()[0])
        if acquired:
            with _held_guard:
                _held.add(key)
        try:
            yield acquired
        finally:
            if acquired:
                with _held_guard:
                    _held.discard(key)
    finally:
        _end(holder)


def _end(holder: psycopg.Connection) -> None:
    """End the lock's transaction and wait for the server to say so (a bare close is asynchronous:
    the next run could still find the lock held), then close; a lost connection took the lock along."""
    try:
        holder.rollback()
    except psycopg.Error:
        pass
    holder.close()


def claim_tick(conn: psycopg.Connection, job: str, tick: datetime, host: str | None = None) -> bool:
    """Claim the scheduled `tick` of `job` for this replica; False when another replica has it."""
    return bool(_fetch(conn, sql.JOB_TICK_CLAIM, {"job": job, "tick": tick, "host": host or this_host()}))


def release_tick(conn: psycopg.Connection, job: str, tick: datetime, host: str | None = None) -> None:
    """Give a claimed tick back (its run failed) so that another replica may retry it."""
    try:
        conn.execute(sql.JOB_TICK_RELEASE, {"job": job, "tick": tick, "host": host or this_host()})
    except psycopg.Error as exc:
        logger.warning("could not give back the %s tick %s: %s", job, tick.isoformat(), one_line(exc))


def abandon_stale_runs(conn: psycopg.Connection, job: str) -> int:
    """Mark runs left 'running' as failed. Only while holding the job's lock: then none is live."""
    return len(_fetch(conn, sql.JOB_RUNS_ABANDON, {"job": job, "error": ABANDONED}))


def start_run(conn: psycopg.Connection, job: str, *, dry_run: bool, host: str | None = None) -> JobReport:
    report = JobReport(job=job, dry_run=dry_run, started_at=utcnow(), host=host or this_host())
    rows = _fetch(
        conn,
        sql.JOB_RUN_START,
        {"job": job, "started_at": report.started_at, "dry_run": dry_run, "host": report.host},
    )
    report.run_id = rows[0]["id"]
    return report


def finish_run(conn: psycopg.Connection, report: JobReport, status: str, error: str | None = None) -> None:
    """Record the outcome; if the database is unreachable the row stays 'running' until abandoned."""
    report.status = status
    report.error = error if error is not None else report.error
    report.finished_at = utcnow()
    try:
        conn.execute(
            sql.JOB_RUN_FINISH,
            {
                "id": report.run_id,
                "finished_at": report.finished_at,
                "status": status,
                "counts": Jsonb(report.counts),
                "tenant_counts": Jsonb(report.tenant_counts),
                "error": report.error,
            },
        )
    except psycopg.Error as exc:
        logger.warning("could not record the end of %s run %s: %s", report.job, report.run_id, one_line(exc))


@contextmanager
def recorded_run(
    conn: psycopg.Connection, job: str, *, dry_run: bool, host: str | None = None
) -> Iterator[JobReport]:
    """Run a job's work under its lock and record it; raises `JobBusy` when the lock is taken.

    The body fills the yielded report; it ends 'succeeded' unless the body set status to
    'failed' (e.g. interrupted between batches) or raised, in which case it is 'failed' with
    the error and the exception propagates.
    """
    require_autocommit(conn)
    with job_lock(conn, job) as acquired:
        if not acquired:
            raise JobBusy(
                f"{job} is already running (another replica or command holds its lock); "
                "nothing was done, try again later"
            )
        abandoned = abandon_stale_runs(conn, job)
        report = start_run(conn, job, dry_run=dry_run, host=host)
        if abandoned:
            report.bump("abandoned_runs", abandoned)
        try:
            yield report
        except BaseException as exc:
            finish_run(conn, report, FAILED, one_line(exc))
            raise
        finish_run(conn, report, FAILED if report.status == FAILED else SUCCEEDED)


@contextmanager
def batch_settings(conn: psycopg.Connection, *, dry_run: bool, lock_timeout: str = "100ms") -> Iterator[None]:
    """For a real run's batches: commits that do not wait for the disk, and a short lock timeout
    (a batch gives up on a row a writer holds before any deadlock check could pick the writer);
    the session's own settings are restored after, so the run's record commits as usual and
    flushes every batch before the run shows as finished. A dry run changes nothing."""
    if dry_run:
        yield
        return
    saved = fetch_unprepared(conn, sql.JOB_BATCH_SETTINGS, {})[0]
    fetch_unprepared(conn, sql.JOB_SET_BATCH_SETTINGS, {"synchronous_commit": "off", "lock_timeout": lock_timeout})
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            fetch_unprepared(conn, sql.JOB_SET_BATCH_SETTINGS, saved)


def history(conn: psycopg.Connection, limit: int = 20, job: str | None = None) -> list[JobReport]:
    """The latest runs, newest first."""
    rows = _fetch(conn, sql.JOB_RUNS_HISTORY, {"job": job, "limit": limit})
    return [JobReport.from_row(row) for row in rows]


def last_successes(conn: psycopg.Connection) -> dict[str, datetime]:
    """When each job last finished a real (not dry) run successfully, over every replica."""
    return {row["job"]: row["finished_at"] for row in _fetch(conn, sql.JOB_LAST_SUCCESS, {})}


__all__ = [
    "ABANDONED",
    "FAILED",
    "RUNNING",
    "SUCCEEDED",
    "JobBusy",
    "JobInterrupted",
    "abandon_stale_runs",
    "batch_settings",
    "fetch_unprepared",
    "finish_run",
    "history",
    "claim_tick",
    "job_lock",
    "release_tick",
    "last_successes",
    "recorded_run",
    "start_run",
]
