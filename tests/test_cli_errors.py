"""The CLI's error boundary: every command, on an un-migrated database, a database that is down,
and with bad arguments, ends in exactly one `error:` line and a non-zero exit, never a traceback.

In process (typer's CliRunner drives the same `main` as the console script); a few cases run the
real entry point in a subprocess.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memory.cli import app
from helpers import memory_cli

SERVERS = ("pg18",)
"""Version-independent: the embedded server only (conftest.pytest_generate_tests)."""

DOWN_URL = "postgresql://nobody@127.0.0.1:1/nothing"
"""A closed port: the database is down."""


def commands(tmp: Path) -> dict[str, list[str]]:
    """Every command with its main flags, as an operator types them (none of them changes the schema)."""
    bundle = tmp / "acme.bundle"
    bundle.write_bytes(b"not a bundle")
    dump = tmp / "memory-x.dump"
    dump.write_bytes(b"not a dump")
    return {
        "db current": ["db", "current", "--json"],
        "db downgrade": ["db", "downgrade", "-1", "--json"],
        "jobs run ttl-cleanup": ["jobs", "run", "ttl-cleanup", "--dry-run", "--json"],
        "jobs run prune-checkpoints": ["jobs", "run", "prune-checkpoints", "--tenant", "acme"],
        "jobs run backup": ["jobs", "run", "backup"],
        "jobs history": ["jobs", "history", "--limit", "5", "--job", "backup"],
        "backup create": ["backup", "create", "--out", str(tmp / "backups"), "--json"],
        "backup verify": ["backup", "verify", str(dump)],
        "backup restore": ["backup", "restore", str(dump), "--force"],
        "backup restore --tenant": ["backup", "restore", str(dump), "--tenant", "acme", "--dry-run"],
        "tenant list": ["tenant", "list", "--json"],
        "tenant stats": ["tenant", "stats", "acme"],
        "tenant export": ["tenant", "export", "acme", "-o", str(tmp / "out.bundle")],
        "tenant import": ["tenant", "import", str(bundle), "--as", "acme2", "--dry-run"],
        "tenant delete": ["tenant", "delete", "acme", "--yes"],
        "threads unowned": ["threads", "unowned", "--json"],
        "threads assign": ["threads", "assign", "t1", "acme"],
        "keys create": ["keys", "create", "acme", "--name", "ci"],
        "keys list": ["keys", "list"],
        "keys revoke": ["keys", "revoke", "k1"],
        "serve": ["serve", "--port", "0", "--no-jobs"],
    }


BAD_ARGUMENTS = {
    "unknown command": ["nosuch"],
    "unknown option": ["jobs", "run", "ttl-cleanup", "--bogus"],
    "unknown job": ["jobs", "run", "vacuum"],
    "missing argument": ["tenant", "stats"],
    "port out of range": ["serve", "--port", "99999"],
    "jobs only and no jobs": ["serve", "--jobs-only", "--no-jobs"],
    "history limit": ["jobs", "history", "--limit", "0"],
    "bad tenant id": ["tenant", "delete", "a b", "--yes"],
    "delete without --yes": ["tenant", "delete", "acme"],
    "missing bundle": ["tenant", "import", "/nonexistent/x.bundle"],
    "missing backup": ["backup", "verify", "/nonexistent/x.dump"],
    "bad import mode": ["tenant", "import", "/nonexistent/x.bundle", "--mode", "overwrite"],
    "bad demo model": ["demo", "--model", "foo"],
    "export to a missing dir": ["tenant", "export", "acme", "-o", "/nonexistent/dir/x.bundle"],
    "restore flags without --tenant": ["backup", "restore", "/nonexistent/x.dump", "--dry-run"],
}


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):
    """Invoke the CLI in process with `env` over an environment free of MEMORY_* and DATABASE_URL."""
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    for name in list(os.environ):
        if name.startswith("MEMORY_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)

    def invoke(args: list[str], **env: str):
        return CliRunner().invoke(app, args, env=env, catch_exceptions=False)

    return invoke


def assert_one_error_line(result, label: str) -> str:
    """Exit non-zero, exactly one stderr line `error: ...`, no traceback anywhere."""
    assert result.exit_code != 0, f"{label}: exit 0\n{result.output}"
    assert "Traceback" not in result.output + result.stderr, f"{label}: traceback\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{label}: {result.stderr!r}"
    return lines[0]


@pytest.fixture
def unmigrated_url(embedded_server):
    """A database nobody migrated: no table of ours or LangGraph's."""
    name = f"memory_raw_{uuid.uuid4().hex[:12]}"
    url = embedded_server.create_database(name)
    yield url
    embedded_server.drop_database(name)


FILE_FIRST = {"backup verify", "backup restore", "backup restore --tenant", "tenant import"}
"""Commands that read their file before the database (a bad file is what they report)."""


def test_every_command_on_a_database_that_is_down(cli, tmp_path):
    for label, args in commands(tmp_path).items():
        line = assert_one_error_line(cli(args, MEMORY_DATABASE_URL=DOWN_URL), label)
        assert label in FILE_FIRST or "127.0.0.1:1" in line, (label, line)


def test_every_command_on_an_unmigrated_database(cli, tmp_path, unmigrated_url):
    answered_anyway = {"db current", "db downgrade", *FILE_FIRST}
    for label, args in commands(tmp_path).items():
        if label == "serve":
            continue  # it would serve; serve's failures are covered below
        result = cli(args, MEMORY_DATABASE_URL=unmigrated_url)
        if label in answered_anyway and result.exit_code == 0:
            continue
        line = assert_one_error_line(result, label)
        if label not in answered_anyway:
            assert "memory db upgrade" in line, (label, line)


def test_bad_arguments_are_one_line(cli, tmp_path):
    for label, args in BAD_ARGUMENTS.items():
        assert_one_error_line(cli(args, MEMORY_DATABASE_URL=DOWN_URL), label)


def test_bad_settings_are_one_line(cli):
    cases = {
        "typo'd variable": {"MEMORY_RETENTION_DEFAULT_TTL_DAYZ": "3"},
        "list as bad JSON": {"MEMORY_RETENTION_RULES": "[{"},
        "wrong type": {"MEMORY_RETENTION_DEFAULT_TTL_DAYS": "soon"},
        "not postgres": {"MEMORY_DATABASE_URL": "mysql://x@db/app"},
    }
    for label, env in cases.items():
        line = assert_one_error_line(cli(["db", "current"], **env), label)
        assert next(iter(env)) in line, (label, line)


def test_list_settings_from_the_environment_take_a_comma_list(cli):
    """`MEMORY_RETENTION_LEGAL_HOLD=acme` was a JSON traceback; now a,b and JSON both work."""
    import json

    for value in ("acme,globex", '["acme", "globex"]'):
        result = cli(["config", "show", "--json"], MEMORY_RETENTION_LEGAL_HOLD=value)
        assert result.exit_code == 0, result.stderr
        rows = {row["setting"]: row for row in json.loads(result.stdout)["settings"]}
        assert rows["[retention] legal_hold"]["value"] == ["acme", "globex"]
        assert rows["[retention] legal_hold"]["source"] == "env MEMORY_RETENTION_LEGAL_HOLD"


def test_export_to_a_directory_or_a_missing_directory_leaves_nothing(cli, tmp_path, database_url):
    for out in (tmp_path, tmp_path / "missing" / "x.bundle"):
        line = assert_one_error_line(cli(["tenant", "export", "acme", "-o", str(out)], MEMORY_DATABASE_URL=database_url), str(out))
        assert str(out) in line
    assert list(tmp_path.iterdir()) == [], "an export that failed left a file behind"


def test_backup_to_an_unwritable_directory_is_one_line(cli, tmp_path, database_url):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the backup directory should be")
    line = assert_one_error_line(
        cli(["backup", "create", "--out", str(blocked / "backups")], MEMORY_DATABASE_URL=database_url), "backup create"
    )
    assert str(blocked) in line
    line = assert_one_error_line(
        cli(["jobs", "run", "backup"], MEMORY_DATABASE_URL=database_url, MEMORY_BACKUP_DIR=str(blocked / "backups")),
        "jobs run backup",
    )
    assert str(blocked) in line


def test_downgrade_takes_minus_one(cli, database_url):
    result = cli(["db", "downgrade", "-1", "--json"], MEMORY_DATABASE_URL=database_url)
    assert result.exit_code == 0, result.stderr
    assert "downgrade" not in result.stderr


def test_the_console_script_prints_one_line_and_a_traceback_with_v():
    done = memory_cli("serve", "--port", "99999")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    done = memory_cli("jobs", "history", MEMORY_DATABASE_URL=DOWN_URL)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stderr
    verbose = memory_cli("-v", "jobs", "history", MEMORY_DATABASE_URL=DOWN_URL)
    assert "Traceback" in verbose.stderr and verbose.stderr.strip().splitlines()[-1] == done.stderr.strip()


def test_help_shows_section_names_defaults_and_where_backups_go(cli):
    """Plain help: `[retention]` and friends survive (rich markup ate them), flags carry no `<bool>`."""
    pages = {" ".join(args): cli([*args, "--help"]) for args in (
        [], ["jobs"], ["jobs", "run"], ["jobs", "history"], ["backup"], ["backup", "create"], ["backup", "list"],
        ["serve"], ["db", "downgrade"], ["config", "show"], ["tenant", "export"], ["demo"],
    )}
    for name, page in pages.items():
        assert page.exit_code == 0, name
        assert "<bool>" not in page.stdout, name
    assert "[schedule]" in pages["jobs"].stdout and "[retention]" in pages["jobs run"].stdout
    assert "[default: 20;" in pages["jobs history"].stdout
    for name in ("backup", "backup create", "backup list", "jobs run", ""):
        assert "backups/ under" in " ".join(pages[name].stdout.split()), name
    assert "[serve] port, 9464" in " ".join(pages["serve"].stdout.split())


def test_memory_help_does_not_import_langgraph():
    import subprocess
    import sys

    code = "import sys\nfrom memory.cli import app\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('langgraph', 'deepagents', 'psycopg')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
