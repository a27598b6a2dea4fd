"""The scheduler: APScheduler cron triggers from `[schedule]`, each tick run once across replicas.

Every replica of `memory serve` runs the same triggers. On a tick, a replica takes the job's
lock without waiting (`jobs.runs.job_lock`; another replica holding it is running: skip), then
claims `(job, tick)` in `memory_job_ticks` (ON CONFLICT DO NOTHING: a replica that finished the
tick before this one fired has it: skip), and runs the job; a failed run gives the tick back.
The jobs are the plain functions in `jobs/`; this module only maps them to triggers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from psycopg_pool import ConnectionPool

from jobs import registry, runs
from jobs.registry import JobRunner
from jobs.report import FAILED, SUCCEEDED, JobReport
from memory.db import connection

logger = logging.getLogger(__name__)

MISFIRE_GRACE_S = 30
"""A tick fired later than this (the process was busy or asleep) is skipped, not run late."""


def job_runners(settings: Any, database_url: str | None = None) -> dict[str, JobRunner]:
    """Each registered job by name, bound to its settings (the edge reads settings; jobs take plain
    values). A job that cannot run without the database URL (backup: pg_dump connects on its own) is
    there only with one."""
    runners = {}
    for job in registry.jobs():
        runner = job.bind(settings, database_url)
        if runner is not None:
            runners[job.name] = runner
    return runners


def log_report(report: JobReport) -> None:
    """One line per run: run id, job, status, its counts (JSON), and what it did in its own words."""
    import json

    spec = next((job for job in registry.jobs() if job.name == report.job), None)
    said = spec.summary(report) if spec is not None else ""
    logger.info(
        "job run %s %s %s in %.2fs: %s counts=%s",
        report.run_id, report.job, report.status, report.duration_s or 0, said,
        json.dumps(report.counts, sort_keys=True, default=str),
        extra={"run_id": report.run_id, "job": report.job, "status": report.status, "counts": report.counts},
    )


def cron(expression: str) -> CronTrigger:
    """A 5-field crontab (minute hour day month weekday), evaluated in UTC."""
    return CronTrigger.from_crontab(expression, timezone=timezone.utc)


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    trigger: BaseTrigger
    run: JobRunner
    schedule: str = ""
    """The crontab it came from, for display."""


def scheduled_jobs(settings: Any, database_url: str | None = None) -> list[ScheduledJob]:
    """The jobs `[schedule]` enables (an empty crontab disables one); jobs not built yet are left out."""
    jobs = []
    runners = job_runners(settings, database_url)
    for job in registry.jobs():
        expression = getattr(settings, f"schedule_{job.schedule_key}", "")
        if job.name in runners and expression.strip():
            jobs.append(ScheduledJob(job.name, cron(expression), runners[job.name], expression))
    return jobs


def latest_tick(trigger: BaseTrigger, now: datetime, lookback: timedelta) -> datetime | None:
    """The trigger's most recent fire time at or before `now`, looking back at most `lookback`."""
    tick = None
    fire = trigger.get_next_fire_time(None, now - lookback)
    while fire is not None and fire <= now:
        tick = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return tick


@dataclass
class JobMetrics:
    """What this process's scheduler did, for /metrics (thread-safe counters)."""

    runs: dict[tuple[str, str], int] = field(default_factory=dict)
    skipped: dict[tuple[str, str], int] = field(default_factory=dict)
    deleted: dict[tuple[str, str], int] = field(default_factory=dict)
    duration_sum: dict[str, float] = field(default_factory=dict)
    duration_count: dict[str, int] = field(default_factory=dict)
    last_duration: dict[str, float] = field(default_factory=dict)
    longest_transaction: dict[str, float] = field(default_factory=dict)
    last_success: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, report: JobReport) -> None:
        with self._lock:
            key = (report.job, report.status)
            self.runs[key] = self.runs.get(key, 0) + 1
            for what in ("items", "vectors", "checkpoints", "writes", "blobs"):
                if not report.dry_run:
                    self.deleted[(report.job, what)] = self.deleted.get((report.job, what), 0) + report.counts.get(what, 0)
            if report.duration_s is not None:
                self.duration_sum[report.job] = self.duration_sum.get(report.job, 0.0) + report.duration_s
                self.duration_count[report.job] = self.duration_count.get(report.job, 0) + 1
                self.last_duration[report.job] = report.duration_s
            self.longest_transaction[report.job] = report.longest_transaction_s
            if report.status == SUCCEEDED and not report.dry_run and report.finished_at is not None:
                self.last_success[report.job] = report.finished_at.timestamp()

    def failed(self, job: str) -> None:
        with self._lock:
            self.runs[(job, FAILED)] = self.runs.get((job, FAILED), 0) + 1

    def skip(self, job: str, reason: str) -> None:
        with self._lock:
            self.skipped[(job, reason)] = self.skipped.get((job, reason), 0) + 1

    def snapshot(self) -> JobMetrics:
        with self._lock:
            return JobMetrics(
                dict(self.runs),
                dict(self.skipped),
                dict(self.deleted),
                dict(self.duration_sum),
                dict(self.duration_count),
                dict(self.last_duration),
                dict(self.longest_transaction),
                dict(self.last_success),
            )


BUSY, DONE = "busy", "tick_done"
"""Why a tick was skipped: another replica holds the lock / already ran it."""


class JobScheduler:
    """A `BackgroundScheduler` running `jobs` on connections from `pool`, once per tick across replicas."""

    def __init__(
        self,
        pool: ConnectionPool | str,
        jobs: list[ScheduledJob],
        *,
        metrics: JobMetrics | None = None,
        misfire_grace_s: int = MISFIRE_GRACE_S,
    ) -> None:
        self.pool = pool
        self.jobs = jobs
        self.metrics = metrics or JobMetrics()
        self.misfire_grace_s = misfire_grace_s
        self.stop = threading.Event()
        self.scheduler = BackgroundScheduler(
            timezone=timezone.utc,
            executors={"default": ThreadPoolExecutor(max_workers=max(1, len(jobs)))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": misfire_grace_s},
        )
        for job in jobs:
            self.scheduler.add_job(self.run_tick, trigger=job.trigger, args=[job], id=job.name, name=job.name)

    def start(self) -> None:
        self.stop.clear()
        self.scheduler.start()

    def shutdown(self) -> None:
        """Stop firing; a running job ends after its current batch (committed), then return."""
        self.stop.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)

    def _connection(self):
        if isinstance(self.pool, str):
            return psycopg.connect(self.pool, autocommit=True)
        return connection(self.pool)

    def run_tick(self, job: ScheduledJob, now: datetime | None = None) -> JobReport | str | None:
        """Run `job` for the tick at or before `now`, unless another replica has it or had it.

        Returns the report, `"busy"` or `"tick_done"` (skipped), or None when the run failed
        (logged, counted in the metrics).
        """
        now = now or runs.utcnow()
        tick = latest_tick(job.trigger, now, timedelta(seconds=self.misfire_grace_s))
        try:
            with self._connection() as conn, runs.job_lock(conn, job.name) as acquired:
                if not acquired:
                    self.metrics.skip(job.name, BUSY)
                    return BUSY
                if tick is not None and not runs.claim_tick(conn, job.name, tick):
                    self.metrics.skip(job.name, DONE)
                    return DONE
                try:
                    report = job.run(conn, stop=self.stop)
                except BaseException:
                    if tick is not None:
                        runs.release_tick(conn, job.name, tick)
                    raise
                if tick is not None and report.status != SUCCEEDED:
                    runs.release_tick(conn, job.name, tick)
        except Exception:
            logger.exception("%s failed", job.name)
            self.metrics.failed(job.name)
            return None
        self.metrics.record(report)
        log_report(report)
        return report
