"""The job registry: one entry per job, each scheduled by its key and reporting in its own words;
the library modules of `memory/` do not import `jobs/`."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from typer.testing import CliRunner

from jobs import registry
from jobs.scheduler import job_runners, scheduled_jobs
from memory import cli
from memory.cli import JOB_NAMES, app
from memory.settings import MemorySettings

SERVERS = ("pg18",)
"""Version-independent: the embedded server only (conftest.pytest_generate_tests)."""

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"memory/cli.py", "memory/serve.py", "memory/__main__.py"}
"""Modules sitting on top of both `memory/` and `jobs/` (and the memory/api package)."""


def test_library_modules_of_memory_do_not_import_jobs():
    offenders = []
    for path in sorted((ROOT / "memory").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in ENTRY_POINTS or relative.startswith("memory/api/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{relative}: {name}" for name in names if name == "jobs" or name.startswith("jobs.")]
    assert offenders == []


def test_every_job_is_one_registry_entry_scheduled_by_its_key():
    jobs = registry.jobs()
    assert [job.command for job in jobs] == list(JOB_NAMES)
    settings = MemorySettings.load()
    assert set(job_runners(settings, "postgresql://x@h/db")) == {job.name for job in jobs}
    assert set(job_runners(settings)) == {job.name for job in jobs} - {"backup"}  # pg_dump needs the URL
    for job in jobs:
        assert hasattr(settings, f"schedule_{job.schedule_key}"), job.name
        assert job.deletes and job.summary and job.done
    only_backup = MemorySettings.load(schedule_ttl_cleanup="", schedule_prune_checkpoints="", schedule_backup="5 1 * * *")
    assert [(j.name, j.schedule) for j in scheduled_jobs(only_backup, "postgresql://x@h/db")] == [("backup", "5 1 * * *")]


def _cli(args: list[str], database_url: str, tmp_path: Path):
    env = {"MEMORY_DATABASE_URL": database_url, "MEMORY_BACKUP_DIR": str(tmp_path)}
    return CliRunner().invoke(app, args, env=env)


def test_each_job_reports_in_its_own_words(database_url, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.console, "width", 300)  # wide tables whatever COLUMNS was at import (xdist sets 80)
    backup = _cli(["jobs", "run", "backup"], database_url, tmp_path)
    assert backup.exit_code == 0, backup.output
    (dump,) = tmp_path.glob("*.dump")
    assert f"wrote {dump}" in backup.stdout and "removed 0 old backups" in backup.stdout, backup.stdout
    assert "items" not in backup.stdout

    prune = _cli(["jobs", "run", "prune-checkpoints"], database_url, tmp_path)
    assert prune.exit_code == 0, prune.output
    assert re.search(r"deleted 0 idle threads; trimmed 0 threads", prune.stdout), prune.stdout

    ttl = _cli(["jobs", "run", "ttl-cleanup", "--dry-run"], database_url, tmp_path)
    assert "would delete 0 memory files" in ttl.stdout, ttl.stdout

    history = _cli(["jobs", "history", "--json"], database_url, tmp_path)
    runs = {run["job"]: run for run in json.loads(history.stdout)}
    assert runs["backup"]["counts"]["file"] == str(dump)
    table = _cli(["jobs", "history"], database_url, tmp_path).stdout
    assert dump.name in table and "0 checkpoints" in table and "items 0" not in table
