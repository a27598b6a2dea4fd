"""The backup job: `memory.backup.create_backup` on a schedule, recorded, pruned to `[backup] keep`.

A backup is written to `[backup] dir` (backups/ under the data dir unless set). A dry run takes
no backup; it counts the backups a real run would remove.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from jobs import runs
from jobs.registry import Job, plural
from jobs.report import JobReport
from memory.backup import create_backup, list_backups, prune
from memory.errors import MemoryServiceError

JOB = "backup"
"""The job's name in `memory_job_runs` and its `[schedule] backup` key."""


class BackupJobError(MemoryServiceError):
    """The backup job cannot run."""


def backup_job(
    conn: psycopg.Connection,
    url: str,
    out_dir: Path,
    keep: int,
    *,
    dry_run: bool = False,
    tenant: str | None = None,
    stop: Any = None,  # noqa: ARG001 - one pg_dump: nothing to stop between
    on_batch: Any = None,  # noqa: ARG001
) -> JobReport:
    """One backup of the database at `url` into `out_dir` under the job's lock, recorded in
    `memory_job_runs`; then the oldest backups beyond `keep` are removed.

    `conn` is an autocommit connection to the same database (pg_dump connects on its own with `url`).
    """
    if tenant is not None:
        raise BackupJobError("a backup holds every tenant; --tenant does not apply (use `memory tenant export T -o FILE`)")
    with runs.recorded_run(conn, JOB, dry_run=dry_run) as report:
        if dry_run:
            report.counts["would_prune"] = max(0, len(list_backups(out_dir)) + 1 - keep)
            return report
        manifest = create_backup(url, out_dir)
        report.counts.update(
            {"tables": len(manifest.tables), "rows": sum(manifest.tables.values()), "bytes": manifest.size,
             "pruned": len(prune(out_dir, keep)), "file": str(manifest.path)}
        )
    return report


def _bind(settings: Any, database_url: str | None):
    if not database_url:
        return None

    def run(conn: psycopg.Connection, *, dry_run: bool = False, tenant: str | None = None, **_: Any) -> JobReport:
        return backup_job(conn, database_url, settings.backup_dir, settings.backup_keep, dry_run=dry_run, tenant=tenant)

    return run


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def summary(report: JobReport) -> str:
    counts = report.counts
    if report.dry_run:
        return f"would remove {plural(counts.get('would_prune', 0), 'old backup')} after the next backup"
    if "file" not in counts:
        return "no backup written"
    return (
        f"wrote {counts['file']} ({_size(counts.get('bytes', 0))}, {plural(counts.get('rows', 0), 'row')} in "
        f"{plural(counts.get('tables', 0), 'table')}); removed {plural(counts.get('pruned', 0), 'old backup')}"
    )


def done(report: JobReport) -> str:
    counts = report.counts
    if report.dry_run:
        return f"would remove {counts.get('would_prune', 0)} old"
    if "file" not in counts:
        return "-"
    return f"{Path(counts['file']).name}, {_size(counts.get('bytes', 0))}, {counts.get('pruned', 0)} old removed"


SPEC = Job(
    name=JOB,
    schedule_key="backup",
    deletes="backups beyond [backup] keep (the oldest first)",
    bind=_bind,
    summary=summary,
    done=done,
)
