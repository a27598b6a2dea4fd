"""`memory demo --json` end to end, as a user runs it: a subprocess, exit codes, one error line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from memory.embedded import PGDATA_DIRNAME

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120


def memory_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m memory ARGS` from the repository, with `env` over a environment free of MEMORY_* and DATABASE_URL."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_") and k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "memory", *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def assert_demo_ok(done: subprocess.CompletedProcess[str]) -> dict:
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["ok"] is True
    assert {t["tenant"] for t in outcome["tenants"]} == {"acme", "globex"}
    for tenant in outcome["tenants"]:
        assert tenant["remembered"] and tenant["scratch_forgotten"] and tenant["isolated"], tenant
        assert tenant["files"] >= 1 and tenant["bytes"] > 0, tenant
    return outcome


def test_demo_json_on_a_configured_database(database_url):
    assert_demo_ok(memory_cli("demo", "--json", MEMORY_DATABASE_URL=database_url))


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir outside pytest's own temp root: another pytest session starting meanwhile makes that
    root private again (0700), and the embedded server's user could no longer reach its files."""
    path = Path(tempfile.mkdtemp(prefix="memory-demo-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
