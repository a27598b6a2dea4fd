"""`memory serve`: the job scheduler plus `/health`, `/ready` and `/metrics` on one HTTP port.

- `/health`: 200 while the process runs.
- `/ready`: 200 when the database answers and its schema is at head; 503 with the reason otherwise.
- `/metrics`: Prometheus text: runs by job and status, ticks skipped, rows deleted, run duration,
  longest transaction, and the last successful run of each job over every replica.

SIGTERM (or SIGINT) stops the triggers, lets a running job finish its current batch (each batch
is one transaction: committed or rolled back, never half done), then closes the port.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg

from jobs import runs
from jobs.scheduler import JobMetrics, JobScheduler, ScheduledJob, scheduled_jobs
from memory import migrations, quotas
from memory.db import check_reachable
from memory.errors import MemoryServiceError

logger = logging.getLogger(__name__)

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"


class ServeError(MemoryServiceError):
    """`memory serve` could not start."""


DELETED_KINDS = {"ttl_cleanup": ("items", "vectors"), "prune_checkpoints": ("checkpoints", "writes", "blobs")}
"""What each job deletes, as `kind` labels of memory_job_rows_deleted_total."""


def _labels(**labels: str) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items())
    return "{" + inner + "}"


def _number(value: float) -> str:
    """Prometheus sample value: integers as such, floats at full precision (timestamps!)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(metrics: JobMetrics, jobs: list[str], last_success: dict[str, float], database_up: bool) -> str:
    """Prometheus text exposition format 0.0.4."""
    snap = metrics.snapshot()
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{_labels(**labels) if labels else ''} {_number(value)}")

    family("memory_database_up", "gauge", "1 when the database answered the last check.", [({}, 1.0 if database_up else 0.0)])
    family(
        "memory_job_runs_total",
        "counter",
        "Job runs by this process, by outcome.",
        [({"job": job, "status": status}, float(snap.runs.get((job, status), 0))) for job in jobs for status in (runs.SUCCEEDED, runs.FAILED)],
    )
    family(
        "memory_job_ticks_skipped_total",
        "counter",
        "Ticks this process skipped: busy (another replica held the lock) or tick_done (another replica ran it).",
        [({"job": job, "reason": reason}, float(snap.skipped.get((job, reason), 0))) for job in jobs for reason in ("busy", "tick_done")],
    )
    family(
        "memory_job_rows_deleted_total",
        "counter",
        "Rows deleted by this process's runs (items and their vectors; checkpoints, writes and blobs).",
        [({"job": job, "kind": kind}, float(snap.deleted.get((job, kind), 0))) for job in jobs for kind in DELETED_KINDS.get(job, ())],
    )
    lines.append("# HELP memory_job_duration_seconds Duration of this process's job runs.")
    lines.append("# TYPE memory_job_duration_seconds summary")
    for job in jobs:
        lines.append(f"memory_job_duration_seconds_sum{_labels(job=job)} {_number(snap.duration_sum.get(job, 0.0))}")
        lines.append(f"memory_job_duration_seconds_count{_labels(job=job)} {snap.duration_count.get(job, 0)}")
    family(
        "memory_job_last_duration_seconds",
        "gauge",
        "Duration of this process's last run of the job.",
        [({"job": job}, snap.last_duration[job]) for job in jobs if job in snap.last_duration],
    )
    family(
        "memory_job_longest_transaction_seconds",
        "gauge",
        "Longest single batch transaction in this process's last run of the job.",
        [({"job": job}, snap.longest_transaction[job]) for job in jobs if job in snap.longest_transaction],
    )
    successes = {**snap.last_success, **last_success}
    family(
        "memory_job_last_success_timestamp_seconds",
        "gauge",
        "Unix time the job last finished a real run successfully, on any replica.",
        [({"job": job}, successes[job]) for job in jobs if job in successes],
    )
    return "\n".join(lines) + "\n"


class Probe:
    """What the endpoints ask: the database, the schema, the scheduler's metrics."""

    def __init__(self, svc: Any, scheduler: JobScheduler) -> None:
        self.svc = svc
        self.scheduler = scheduler

    def ready(self) -> tuple[bool, str]:
        settings = self.svc.settings
        try:
            check_reachable(self.svc.database_url)
            state = migrations.current(
                self.svc.database_url,
                schema=settings.database_schema,
                prepare_threshold=settings.database_prepare_threshold,
            )
        except MemoryServiceError as exc:
            return False, str(exc)
        if not state.at_head:
            return False, f"schema at {state.label()}, head is {state.head}: run `memory db upgrade`"
        return True, f"ready: database reachable, schema at {state.label()}"

    def metrics(self) -> str:
        jobs = [job.name for job in self.scheduler.jobs]
        last_success: dict[str, float] = {}
        quota_lines: list[str] = []
        database_up = True
        try:
            with psycopg.connect(self.svc.database_url, autocommit=True, connect_timeout=3) as conn:
                last_success = {job: at.timestamp() for job, at in runs.last_successes(conn).items() if at}
                quota_lines = quotas.metrics_lines(conn, tenant_labels=self.svc.settings.serve_tenant_labels)
        except psycopg.Error as exc:
            database_up = False
            logger.warning("metrics: database unavailable: %s", runs.one_line(exc))
        text = render_metrics(self.scheduler.metrics, jobs, last_success, database_up)
        return text + "".join(line + "\n" for line in quota_lines)


def handler_for(probe: Probe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "deepagents-memory"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/health":
                self._send(200, "ok\n")
            elif path == "/ready":
                ok, reason = probe.ready()
                self._send(200 if ok else 503, reason + "\n")
            elif path == "/metrics":
                self._send(200, probe.metrics(), CONTENT_TYPE_METRICS)
            else:
                self._send(404, "not found: try /health, /ready or /metrics\n")

        def _send(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.debug("%s - %s", self.address_string(), format % args)

    return Handler


def serve(
    svc: Any,
    *,
    host: str,
    port: int,
    jobs: list[ScheduledJob] | None = None,
    on_ready: Callable[[str, list[ScheduledJob]], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the scheduler and the HTTP endpoints until SIGTERM/SIGINT (or `stop` is set), then shut down cleanly.

    `on_ready(url, jobs)` is called once the port is open. Signals are handled only when called
    from the main thread.
    """
    jobs = scheduled_jobs(svc.settings, svc.database_url) if jobs is None else jobs
    scheduler = JobScheduler(svc.pool, jobs)
    try:
        httpd = ThreadingHTTPServer((host, port), handler_for(Probe(svc, scheduler)))
    except OSError as exc:
        raise ServeError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; set [serve] port (MEMORY_SERVE_PORT) "
            "or pass --port"
        ) from exc
    httpd.daemon_threads = True
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    http_thread = threading.Thread(target=httpd.serve_forever, name="memory-serve-http", daemon=True)
    try:
        scheduler.start()
        http_thread.start()
        bound_host, bound_port = httpd.server_address[:2]
        if on_ready is not None:
            on_ready(f"http://{bound_host}:{bound_port}", jobs)
        while not stop.wait(0.5):
            pass
        logger.info("shutting down: waiting for running jobs to finish their current batch")
    finally:
        scheduler.shutdown()
        if http_thread.is_alive():
            httpd.shutdown()
        httpd.server_close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
