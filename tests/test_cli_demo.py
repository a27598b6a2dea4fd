"""`memory demo --json` end to end, as a user runs it: a subprocess, exit codes, one error line."""

from __future__ import annotations

import json
import subprocess

from helpers import memory_cli
from memory.embedded import PGDATA_DIRNAME

SERVERS = ("pg18",)
"""Version-independent: the embedded server only (conftest.pytest_generate_tests)."""


def assert_demo_ok(done: subprocess.CompletedProcess[str]) -> dict:
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["ok"] is True
    assert {t["tenant"] for t in outcome["tenants"]} == {"demo-acme", "demo-globex"}
    for tenant in outcome["tenants"]:
        assert tenant["remembered"] and tenant["scratch_forgotten"] and tenant["isolated"], tenant
        assert tenant["files"] >= 1 and tenant["bytes"] > 0, tenant
    return outcome


def test_demo_json_on_a_configured_database(database_url):
    assert_demo_ok(memory_cli("demo", "--json", MEMORY_DATABASE_URL=database_url))


def test_demo_json_on_the_embedded_default(data_dir):
    """No URL at all: the demo starts an embedded server under MEMORY_DATA_DIR and stops it on exit."""
    done = memory_cli("demo", "--json", MEMORY_DATA_DIR=str(data_dir))
    assert_demo_ok(done)

    pgdata = data_dir / PGDATA_DIRNAME
    assert (pgdata / "PG_VERSION").read_text().strip() == "18"
    assert not (pgdata / "postmaster.pid").exists(), "the embedded server is still running after the demo exited"


def test_unreachable_database_is_one_error_line_and_exit_1():
    done = memory_cli("demo", "--json", MEMORY_DATABASE_URL="postgresql://x@127.0.0.1:1/db")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "127.0.0.1:1" in lines[0]


def test_missing_memory_config_is_one_error_line_and_exit_1(tmp_path):
    missing = tmp_path / "nope.toml"
    done = memory_cli("demo", "--json", MEMORY_CONFIG=str(missing))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: MEMORY_CONFIG points at {missing}, which does not exist"]


def test_a_server_left_by_a_killed_process_is_reused_then_stopped(data_dir):
    """kill -9 skips the holder's cleanup; the next command finds the server, uses it, and stops it."""
    import os
    import signal
    import sys

    from helpers import REPO

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom memory import MemoryService\n"
         f"with MemoryService.open(data_dir={str(data_dir)!r}, database_pool_max_size=1):\n"
         "    print('up', flush=True); time.sleep(600)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MEMORY_") and k != "DATABASE_URL"},
    )
    try:
        assert holder.stdout.readline().strip() == "up"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    pid_file = data_dir / PGDATA_DIRNAME / "postmaster.pid"
    assert pid_file.exists(), "the killed holder's server should still run"
    postmaster = int(pid_file.read_text().splitlines()[0])

    done = memory_cli("db", "current", MEMORY_DATA_DIR=str(data_dir))
    assert done.returncode == 0, done.stderr
    assert not pid_file.exists(), "the next command left the orphaned server running"
    import psutil

    try:
        psutil.Process(postmaster).wait(30)  # pg_ctl stop -w returns as the pid file goes; the exit follows
    except psutil.NoSuchProcess:
        pass
