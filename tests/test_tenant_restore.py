"""Restoring one tenant from a full backup on real PostgreSQL: the tenant back to its backup state,
every other tenant as it is now, erased tenants refused, and kill -9 leaving nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
from psycopg.rows import dict_row
from typer.testing import CliRunner

from memory import MemoryService, erasure, tenants
from memory.backup import create_backup, table_checksums
from memory.cli import app
from memory.db import connection
from memory.scripted import tool_call
from memory.tenant_restore import SCRATCH_PREFIX, TenantRestoreError, restore_tenant, sweep_scratch
from helpers import run_agent
from tenant_rows import md5s, thread_ids


def write(svc: MemoryService, tenant: str, name: str, content: str) -> None:
    run_agent(svc, tenant, tool_call("write_file", file_path=f"/memories/{name}", content=content))


def populate(svc: MemoryService) -> None:
    for tenant in ("acme", "globex"):
        for n in range(2):
            write(svc, tenant, f"{tenant}-{n}.md", f"{tenant} note {n}\n")


def scratches(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'memory\\_scratch\\_%'")]


def test_one_tenant_goes_back_to_its_backup_state_and_the_others_keep_their_changes(vector_service, tmp_path):
    svc, url = vector_service, vector_service.database_url
    populate(svc)
    manifest = create_backup(url, tmp_path)
    acme_threads = thread_ids(url, "acme")
    acme_at_backup = md5s(url, "acme", acme_threads)
    # since the backup: acme loses a file, gains one and a thread; globex gains a file and a thread
    with connection(svc.pool) as conn:
        conn.execute("DELETE FROM store WHERE prefix = 'acme.memories' AND key = '/acme-0.md'")
    write(svc, "acme", "bad.md", "a bad import\n")
    write(svc, "globex", "new.md", "globex keeps this\n")
    all_acme = thread_ids(url, "acme")
    assert len(all_acme) == len(acme_threads) + 1
    globex_threads = thread_ids(url, "globex")
    globex_now = md5s(url, "globex", globex_threads)
    asked = []

    dry = restore_tenant(tmp_path / manifest.file, url, "acme", dry_run=True)
    assert dry.backup["items"] == 2 and dry.current["items"] == 2 and dry.imported is None
    assert md5s(url, "acme", all_acme) != acme_at_backup

    plan = restore_tenant(tmp_path / manifest.file, url, "acme", confirm=lambda p: asked.append(p) or True)

    assert len(asked) == 1 and asked[0].backup["threads"] == 2 and asked[0].current["threads"] == 3
    assert plan.imported["mode"] == "replace" and plan.imported["items_inserted"] == 2
    assert md5s(url, "acme", all_acme) == acme_at_backup
    assert md5s(url, "acme", all_acme)["store_vectors"][0] == 2
    assert md5s(url, "globex", globex_threads) == globex_now
    assert scratches(url) == []


def test_cancel_and_as_another_name(service, tmp_path):
    url = service.database_url
    populate(service)
    manifest = create_backup(url, tmp_path)
    write(service, "acme", "later.md", "later\n")
    with psycopg.connect(url, row_factory=dict_row) as conn:
        before = table_checksums(conn)
    with pytest.raises(TenantRestoreError, match="cancelled; nothing was changed"):
        restore_tenant(tmp_path / manifest.file, url, "acme", confirm=lambda plan: False)
    with psycopg.connect(url, row_factory=dict_row) as conn:
        assert table_checksums(conn) == before

    plan = restore_tenant(tmp_path / manifest.file, url, "acme", as_tenant="acme_yesterday")
    assert plan.target == "acme_yesterday" and plan.imported["items_inserted"] == 2
    with connection(service.pool) as conn:
        assert tenants.tenant_stats(conn, "acme").items == 3
        assert tenants.tenant_stats(conn, "acme_yesterday").items == 2
    with pytest.raises(erasure.NoSuchTenant, match="no such tenant in .*: nobody"):
        restore_tenant(tmp_path / manifest.file, url, "nobody", dry_run=True)


def test_an_erased_tenant_cannot_be_restored_under_its_own_name(service, tmp_path, monkeypatch):
    url = service.database_url
    populate(service)
    manifest = create_backup(url, tmp_path)
    with connection(service.pool) as conn:
        receipt = tenants.delete_tenant(conn, "acme")
    with psycopg.connect(url, row_factory=dict_row) as conn:
        before = table_checksums(conn)
    monkeypatch.setenv("MEMORY_DATABASE_URL", url)
    result = CliRunner().invoke(app, ["backup", "restore", str(tmp_path / manifest.file), "--tenant", "acme", "--yes"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and receipt["receipt"] in lines[0] and "--as" in lines[0]
    with psycopg.connect(url, row_factory=dict_row) as conn:
        assert table_checksums(conn) == before
    assert scratches(url) == []

    done = CliRunner().invoke(
        app, ["backup", "restore", str(tmp_path / manifest.file), "--tenant", "acme", "--as", "acme_back", "--yes", "--json"]
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["imported"]["items_inserted"] == 2


@pytest.mark.servers("pg18")  # CLI wiring; the library tests cover its SQL on both servers
def test_cli_without_yes_and_without_a_terminal_refuses_showing_the_counts(service, tmp_path, monkeypatch):
    populate(service)
    manifest = create_backup(service.database_url, tmp_path)
    monkeypatch.setenv("MEMORY_DATABASE_URL", service.database_url)
    result = CliRunner().invoke(app, ["backup", "restore", str(tmp_path / manifest.file), "--tenant", "acme"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1
    assert "2 items" in lines[0] and "replace what acme holds now" in lines[0] and "--yes" in lines[0]


def _processes_naming(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        found.append(int(pid))
            except OSError:
                continue
    return found


def test_kill_9_mid_restore_leaves_both_tenants_unchanged_and_no_scratch(service, tmp_path):
    """The restore is held with its scratch database loaded (a lock on the live `checkpoints`), then
    killed -9: nothing changed, its children are gone, and the next run sweeps the scratch."""
    url = service.database_url
    populate(service)
    manifest = create_backup(url, tmp_path)
    write(service, "acme", "later.md", "later\n")
    write(service, "globex", "later.md", "later\n")
    with psycopg.connect(url, row_factory=dict_row) as conn:
        before = table_checksums(conn)
    env = {**os.environ, "MEMORY_DATABASE_URL": url, "MEMORY_BACKUP_DIR": str(tmp_path)}
    holder = psycopg.connect(url)
    holder.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory", "backup", "restore", str(tmp_path / manifest.file), "--tenant", "acme", "--yes"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with psycopg.connect(url) as conn:
                waiting = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchone()[0]
            if waiting and scratches(url):
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the restore never reached the lock"
            time.sleep(0.05)
        [scratch] = scratches(url)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        holder.rollback()
        holder.close()
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    time.sleep(0.5)
    with psycopg.connect(url, row_factory=dict_row) as conn:
        assert table_checksums(conn) == before
    assert _processes_naming(scratch) == []
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        assert sweep_scratch(conn) == [scratch]
    assert scratches(url) == []


def test_a_live_restores_scratch_is_not_swept(service, tmp_path):
    from memory.tenant_restore import scratch_database

    url = service.database_url
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as owner, \
            psycopg.connect(url, autocommit=True, row_factory=dict_row) as other:
        with scratch_database(owner, url):
            [name] = scratches(url)
            assert name.startswith(SCRATCH_PREFIX) and sweep_scratch(other) == []
        assert scratches(url) == []
