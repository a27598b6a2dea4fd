"""Erasure that nothing brings back, on real PostgreSQL: backups racing an erase, imports, fresh-database
restores, edited manifests, downgrades, unknown tenants."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row
from typer.testing import CliRunner

from memory import MemoryService, erasure, migrations, tenants
from memory.backup import BackupError, create_backup, restore_backup, table_checksums, verify_backup
from memory.cli import app
from memory.db import connection
from memory.scripted import tool_call
from helpers import run_agent
from tenant_rows import counts, thread_ids


def populate(svc: MemoryService, names=("acme", "globex")) -> None:
    for tenant in names:
        for n in range(2):
            run_agent(
                svc,
                tenant,
                tool_call("write_file", file_path=f"/memories/{tenant}-{n}.md", content=f"{tenant} note {n}\n"),
            )


def checksums(url: str) -> dict[str, tuple[int, str]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return table_checksums(conn)


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_backup_taken_while_an_erase_is_running_never_restores_the_tenant(vector_service, tmp_path):
    """The erase holds its transaction open, the backup runs, the erase commits: the backup's times say
    'after the erasure', its snapshot says 'before'. The restore goes by the snapshot."""
    svc, url = vector_service, vector_service.database_url
    populate(svc)
    threads = thread_ids(url, "acme")
    before = counts(url, "acme", threads)
    assert all(before[t] > 0 for t in ("store", "store_vectors", "checkpoints", "checkpoint_blobs", "checkpoint_writes"))

    eraser = psycopg.connect(url, row_factory=dict_row)
    eraser.execute("SELECT 1")  # a transaction in progress: the erase below runs in a savepoint of it, uncommitted
    receipt = tenants.delete_tenant(eraser, "acme")
    manifest = create_backup(url, tmp_path)
    eraser.commit()
    eraser.close()
    assert manifest.created > datetime.fromisoformat(receipt["erased_at"])  # a clock would call it "after"
    assert counts(url, "acme", threads) == dict.fromkeys(before, 0)

    report = restore_backup(tmp_path / manifest.file, url, force=True)

    assert report.erasures_replayed == ["acme"]
    assert counts(url, "acme", threads) == dict.fromkeys(before, 0)
    assert counts(url, "globex", thread_ids(url, "globex"))["store_vectors"] == 2
    with psycopg.connect(url, row_factory=dict_row) as conn:
        assert [e.receipt for e in erasure.ledger(conn)] == [receipt["receipt"]]


def test_backup_taken_after_the_erase_committed_keeps_the_tenants_new_data(service, tmp_path):
    """An erasure the archive's ledger holds is not replayed: data written after it stays."""
    url = service.database_url
    populate(service)
    with connection(service.pool) as conn:
        tenants.delete_tenant(conn, "acme")
    run_agent(service, "acme", tool_call("write_file", file_path="/memories/new.md", content="after the erasure\n"))
    manifest = create_backup(url, tmp_path)
    before = checksums(url)

    report = restore_backup(tmp_path / manifest.file, url, force=True)

    assert report.erasures_replayed == [] and checksums(url) == before


def test_import_of_a_bundle_exported_before_the_erasure_is_refused(service, tmp_path, monkeypatch):
    populate(service)
    bundle = tmp_path / "acme.bundle"
    with connection(service.pool) as conn:
        tenants.export_tenant(conn, "acme", bundle)
        receipt = tenants.delete_tenant(conn, "acme")
    before = checksums(service.database_url)

    monkeypatch.setenv("MEMORY_DATABASE_URL", service.database_url)
    line = one_error_line(CliRunner().invoke(app, ["tenant", "import", str(bundle)]))
    assert f"receipt {receipt['receipt']}" in line and "--as" in line
    line = one_error_line(CliRunner().invoke(app, ["tenant", "import", str(bundle), "--mode", "replace"]))
    assert checksums(service.database_url) == before

    with connection(service.pool) as conn:  # on purpose, under another name
        report = tenants.import_tenant(conn, bundle, as_tenant="acme_restored")
        assert report.items_inserted == 2
        # new data of acme after its erasure exports with the receipt, and imports back
        run_agent(service, "acme", tool_call("write_file", file_path="/memories/new.md", content="new\n"))
        later = tmp_path / "later.bundle"
        assert tenants.export_tenant(conn, "acme", later)["erasures"] == [receipt["receipt"]]
        tenants.import_tenant(conn, later, mode="replace")


def test_restore_into_a_fresh_database_replays_erasures_from_the_receipts(service, pg_server, tmp_path, monkeypatch):
    populate(service)
    threads = thread_ids(service.database_url, "acme")
    manifest = create_backup(service.database_url, tmp_path)
    monkeypatch.setenv("MEMORY_DATABASE_URL", service.database_url)
    monkeypatch.setenv("MEMORY_BACKUP_DIR", str(tmp_path))
    runner = CliRunner()
    deleted = runner.invoke(app, ["tenant", "delete", "acme", "--yes", "--json"])
    assert deleted.exit_code == 0, deleted.output
    receipt = json.loads(deleted.output)["receipt"]
    path = erasure.receipt_path(tmp_path, receipt)
    assert path.is_file() and path.stat().st_mode & 0o777 == 0o600

    name = f"memory_fresh_{uuid.uuid4().hex[:10]}"
    fresh = pg_server.create_database(name)
    try:
        restored = runner.invoke(app, ["backup", "restore", str(tmp_path / manifest.file), "--target", fresh])
        assert restored.exit_code == 0, restored.output
        assert "erased again (erasures the backup does not hold): acme" in restored.output
        assert set(counts(fresh, "acme", threads).values()) == {0}
        assert counts(fresh, "globex", thread_ids(fresh, "globex"))["store"] == 2
        with psycopg.connect(fresh, row_factory=dict_row) as conn:
            assert [e.receipt for e in erasure.ledger(conn)] == [receipt]
    finally:
        pg_server.drop_database(name)


def test_an_edited_manifest_changes_nothing_and_verify_notices_what_it_can(service, tmp_path):
    populate(service)
    threads = thread_ids(service.database_url, "acme")
    manifest = create_backup(service.database_url, tmp_path)
    with connection(service.pool) as conn:
        tenants.delete_tenant(conn, "acme", receipts_dir=tmp_path)
    path = (tmp_path / manifest.file).with_suffix(".json")
    original = json.loads(path.read_text())

    far = {**original, "created_at": (manifest.created + timedelta(days=1)).isoformat()}
    path.write_text(json.dumps(far))
    with pytest.raises(BackupError, match="created_at .* the manifest was edited"):
        verify_backup(tmp_path / manifest.file)
    line = one_error_line(CliRunner().invoke(app, ["backup", "verify", str(path)]))
    assert "the manifest was edited" in line
    forged = {**original, "erasures": ["00000000-0000-0000-0000-000000000000"]}
    path.write_text(json.dumps(forged))
    with pytest.raises(BackupError, match="erasures, the archive's ledger holds"):
        verify_backup(tmp_path / manifest.file)

    # edits verify cannot tell from the truth (a few minutes later, no erasure list, other tables):
    # the restore goes by the archive all the same
    near = {**original, "created_at": (manifest.created + timedelta(minutes=4)).isoformat(),
            "tables": {**original["tables"], "memory_tenant_erasures": 0}}
    near.pop("erasures")
    path.write_text(json.dumps(near))
    verify_backup(tmp_path / manifest.file)
    report = restore_backup(tmp_path / manifest.file, service.database_url, force=True)
    assert report.erasures_replayed == ["acme"]
    assert set(counts(service.database_url, "acme", threads).values()) == {0}


def test_downgrade_never_drops_the_ledger(service):
    url = service.database_url
    populate(service)
    with connection(service.pool) as conn:
        receipt = tenants.delete_tenant(conn, "acme")
    runner = CliRunner()
    line = one_error_line(runner.invoke(app, ["db", "downgrade", "base"], env={"MEMORY_DATABASE_URL": url}))
    assert "erasure ledger holds 1 receipt(s)" in line and "nothing was changed" in line
    with pytest.raises(erasure.ErasureError):
        migrations.downgrade(url, "base")
    assert migrations.current(url).at_head
    with psycopg.connect(url, row_factory=dict_row) as conn:
        assert [e.receipt for e in erasure.ledger(conn)] == [receipt["receipt"]]
        indexes = {r["indexname"] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'checkpoints'")}
    assert "memory_checkpoints_ts_idx" in indexes


def test_unknown_tenants_are_errors_and_write_nothing(service, tmp_path, monkeypatch):
    populate(service)
    monkeypatch.setenv("MEMORY_DATABASE_URL", service.database_url)
    monkeypatch.setenv("MEMORY_BACKUP_DIR", str(tmp_path / "backups"))
    before = checksums(service.database_url)
    runner = CliRunner()
    for args in (["tenant", "delete", "acmee", "--yes"], ["tenant", "stats", "acmee"],
                 ["tenant", "export", "acmee", "-o", str(tmp_path / "x.bundle")]):
        assert one_error_line(runner.invoke(app, args)) == "error: no such tenant: acmee", args
    assert checksums(service.database_url) == before
    assert not (tmp_path / "x.bundle").exists() and not (tmp_path / "x.bundle.partial").exists()
    assert not (tmp_path / "backups").exists()
    # an erased tenant is no longer a tenant either: a second delete writes no second receipt
    assert runner.invoke(app, ["tenant", "delete", "acme", "--yes"]).exit_code == 0
    assert one_error_line(runner.invoke(app, ["tenant", "delete", "acme", "--yes"])) == "error: no such tenant: acme"
    with psycopg.connect(service.database_url, row_factory=dict_row) as conn:
        assert [e.tenant for e in erasure.ledger(conn)] == ["acme"]


def test_receipt_files_are_checked(tmp_path):
    e = erasure.Erasure("acme", datetime.fromisoformat("2026-11-21T02:00:00.123456+00:00"), {"items": 1})
    path = erasure.write_receipt(e, tmp_path)
    assert erasure.read_receipts([tmp_path]) == [e]
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "tenant": "globex"}))
    with pytest.raises(erasure.ErasureError, match="altered"):
        erasure.read_receipts([tmp_path])


def test_copy_text_unescapes():
    text = "COPY public.memory_tenant_erasures (id, tenant, erased_at, counts) FROM stdin;\n" \
           "1\ta\\tb\\\\c\t2026-11-21 02:00:00.5+00\t{\"x\": 1}\n\\.\n"
    [row] = erasure.ledger_from_copy(text)
    assert row.tenant == "a\tb\\c" and row.counts == {"x": 1} and row.erased_at.microsecond == 500000


def test_kill_9_mid_full_restore_stops_psql_and_changes_nothing(service, tmp_path):
    """psql is held on a lock inside the restore transaction, `memory` is killed -9: psql dies with it
    (before, it ran on to COMMIT), and the target is unchanged; no restore script exists anywhere."""
    import os
    import signal
    import subprocess
    import sys
    import time

    url = service.database_url
    populate(service)
    manifest = create_backup(url, tmp_path)
    write_later = tool_call("write_file", file_path="/memories/later.md", content="later\n")
    run_agent(service, "globex", write_later)
    before = checksums(url)
    holder = psycopg.connect(url)
    holder.execute("LOCK TABLE store IN ACCESS SHARE MODE")  # the restore's DROP TABLE store waits on it
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory", "backup", "restore", str(tmp_path / manifest.file), "--force"],
        env={**os.environ, "MEMORY_DATABASE_URL": url, "TMPDIR": str(tmp_path / "tmp")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    (tmp_path / "tmp").mkdir()
    try:
        deadline = time.monotonic() + 60
        while True:
            with psycopg.connect(url) as conn:
                psql = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'psql' "
                    "AND wait_event_type = 'Lock'"
                ).fetchall()
            if psql:
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the restore never reached the lock"
            time.sleep(0.05)
        [[backend]] = psql
        children = _children(proc.pid)
        assert "psql" in [_name(p) for p in children]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while True:  # while the lock is still held: psql died with `memory`, and its session ended
            with psycopg.connect(url) as conn:
                left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()[0]
            if not left and not [p for p in children if _alive(p)]:
                break
            assert time.monotonic() < deadline, "psql outlived the killed restore"
            time.sleep(0.1)
    finally:
        holder.rollback()
        holder.close()
        if proc.poll() is None:
            proc.kill()
    assert checksums(url) == before
    assert list((tmp_path / "tmp").iterdir()) == []



def _children(pid: int) -> list[int]:
    import os

    found = []
    for child in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{child}/stat") as fh:
                if int(fh.read().rsplit(") ", 1)[1].split()[1]) == pid:
                    found.append(int(child))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _name(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as fh:
        return fh.read().strip()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False
