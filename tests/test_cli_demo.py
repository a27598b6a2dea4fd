"""`memory demo --json` end to end, as a user runs it: a subprocess, exit codes, one error line."""

from __future__ import annotations

import json
import subprocess

from helpers import memory_cli
from memory.embedded import PGDATA_DIRNAME


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


def test_demo_json_on_the_embedded_default(tmp_path):
    """No URL at all: the demo starts an embedded server under MEMORY_DATA_DIR and stops it on exit."""
    done = memory_cli("demo", "--json", MEMORY_DATA_DIR=str(tmp_path))
    assert_demo_ok(done)

    pgdata = tmp_path / PGDATA_DIRNAME
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
