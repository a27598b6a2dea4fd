"""The job registry: every job `memory serve` schedules and `memory jobs` runs, one entry each.

A job is a module of `jobs/` holding its function (a `JobRunner`: `(conn, *, dry_run, tenant,
stop, on_batch) -> JobReport` once bound to its settings) and its `SPEC`: its name (recorded in
`memory_job_runs`), its `[schedule]` key, what it deletes, and how its report reads. Adding a job
is one new module plus one line in `JOBS` below (and its crontab key in the settings).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from jobs.report import JobReport


class JobRunner(Protocol):
    def __call__(
        self,
        conn: psycopg.Connection,
        *,
        dry_run: bool = False,
        tenant: str | None = None,
        stop: threading.Event | None = None,
        on_batch: Callable[[JobReport], None] | None = None,
    ) -> JobReport: ...


@dataclass(frozen=True)
class Job:
    name: str
    """Recorded in memory_job_runs and memory_job_ticks, e.g. "ttl_cleanup"."""
    schedule_key: str
    """The `[schedule]` key holding its crontab (settings field `schedule_<key>`)."""
    deletes: str
    """What a run deletes, in a phrase (help, docs)."""
    bind: Callable[[Any, str | None], JobRunner | None]
    """`(settings, database_url) -> runner`, None when it cannot run there (backup without a URL)."""
    summary: Callable[[JobReport], str]
    """The report in the job's own words, one line."""
    done: Callable[[JobReport], str]
    """What a run did, a few words for `memory jobs history`."""
    progress: Callable[[JobReport], str] | None = None
    tenant_columns: tuple[str, ...] = ()
    """Counts shown per tenant (JobReport.tenant_counts), in order."""

    @property
    def command(self) -> str:
        """The `memory jobs run` spelling: ttl-cleanup."""
        return self.name.replace("_", "-")


def jobs() -> tuple[Job, ...]:
    """Every job, in the order they are listed and scheduled."""
    from jobs import backup, checkpoint_pruning, ttl_cleanup

    return (
        ttl_cleanup.SPEC,
        checkpoint_pruning.SPEC,
        backup.SPEC,
    )


def by_name(name: str) -> Job:
    """The job named `name` (ttl_cleanup or ttl-cleanup); KeyError naming the known ones."""
    for job in jobs():
        if name in (job.name, job.command):
            return job
    raise KeyError(f"unknown job {name!r}; known jobs: {', '.join(j.command for j in jobs())}")


def plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"
