"""Backups on real PostgreSQL: pg_dump + manifest, verify, restore into another database, erasure replay."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row
from typer.testing import CliRunner

from jobs.backup import backup_job
from memory import MemoryService, backup, erasure, migrations, sql, tenants
from memory.backup import BackupError, create_backup, list_backups, restore_backup, table_checksums, verify_backup
from memory.cli import app
from memory.db import connection
from memory.pgtools import PgToolError, find_tool
from memory.scripted import tool_call
from helpers import run_agent
from tenant_rows import counts, thread_ids




def populate(svc: MemoryService) -> None:
    """Two tenants, each with memory files and two checkpoint threads (a `_` tenant tests LIKE escaping)."""
    for tenant in ("acme", "glo_bex"):
        for n in range(2):
            run_agent(
                svc,
                tenant,
                tool_call("write_file", file_path=f"/memories/{tenant}-{n}.md", content=f"{tenant} note {n}\n"),
                tool_call("write_file", file_path=f"/scratch/{n}.txt", content="state only\n"),
            )


def checksums(url: str) -> dict[str, tuple[int, str]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return table_checksums(conn)


def empty_database(pg_server) -> tuple[str, str]:
    name = f"memory_restore_{uuid.uuid4().hex[:10]}"
    return name, pg_server.create_database(name)


def test_backup_restore_into_second_database_has_identical_rows(service, pg_server, tmp_path):
    populate(service)
    created, restored = [], []
    manifest = create_backup(service.database_url, tmp_path, on_step=lambda *call: created.append(call))

    assert (tmp_path / manifest.file).is_file() and (tmp_path / manifest.file).with_suffix(".json").is_file()
    tables = len(manifest.tables)
    assert [call for call in created if call[0].startswith("count rows")] == [("count rows (tables)", n, tables) for n in range(tables + 1)]
    assert created[-1] == ("sha256 of the archive (MiB)", 1, 1)
    source = checksums(service.database_url)
    assert manifest.tables["store"] == source["store"][0] == 4
    assert manifest.tables["checkpoints"] == source["checkpoints"][0] > 0
    assert manifest.schema_revision and manifest.sha256 == backup.sha256_file(tmp_path / manifest.file)
    assert [m.file for m in list_backups(tmp_path)] == [manifest.file]
    assert verify_backup(tmp_path / manifest.file).sha256 == manifest.sha256

    name, target = empty_database(pg_server)
    try:
        report = restore_backup(tmp_path / manifest.file, target, on_step=lambda *call: restored.append(call))
        assert report.schema_revision == manifest.schema_revision
        assert list(dict.fromkeys(step for step, _, _ in restored)) == [
            "sha256 of the archive (MiB)", "pg_restore --list",
            f"restore {sum(manifest.tables.values()):,} rows (one transaction)", "migrate to head",
        ]
        assert checksums(target) == source
    finally:
        pg_server.drop_database(name)


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_damaged_archive_fails_verify_and_restore_leaving_target_untouched(service, pg_server, tmp_path, damage):
    populate(service)
    manifest = create_backup(service.database_url, tmp_path)
    archive = tmp_path / manifest.file
    data = archive.read_bytes()
    if damage == "truncate":
        archive.write_bytes(data[: len(data) // 2])
    else:
        archive.write_bytes(data[:-40] + bytes(b ^ 0xFF for b in data[-40:]))

    with pytest.raises(BackupError, match="truncated or altered"):
        verify_backup(archive)
    run_agent(service, "acme", tool_call("write_file", file_path="/memories/after.md", content="newer\n"))
    before = checksums(service.database_url)
    with pytest.raises(BackupError, match="truncated or altered"):
        restore_backup(archive, service.database_url, force=True)
    assert checksums(service.database_url) == before

    result = CliRunner().invoke(app, ["backup", "verify", str(archive)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "truncated or altered" in lines[0]


def test_restore_refuses_non_empty_target_without_force(service, tmp_path):
    populate(service)
    manifest = create_backup(service.database_url, tmp_path)
    before = checksums(service.database_url)
    with pytest.raises(BackupError, match="not empty.*--force"):
        restore_backup(tmp_path / manifest.file, service.database_url)
    assert checksums(service.database_url) == before


def test_restore_of_older_backup_does_not_resurrect_erased_tenant(service, tmp_path):
    populate(service)
    manifest = create_backup(service.database_url, tmp_path)
    threads = thread_ids(service.database_url, "acme")
    assert counts(service.database_url, "acme", threads)["checkpoint_writes"] > 0
    with connection(service.pool) as conn:
        receipt = tenants.delete_tenant(conn, "acme")
        assert receipt["counts"]["items"] == 2 and receipt["counts"]["threads"] == 2

    report = restore_backup(tmp_path / manifest.file, service.database_url, force=True)

    assert report.erasures_replayed == ["acme"]
    with connection(service.pool) as conn:
        other = tenants.tenant_stats(conn, "glo_bex")
        ledger = conn.execute("SELECT tenant FROM memory_tenant_erasures").fetchall()
    assert set(counts(service.database_url, "acme", threads).values()) == {0}
    assert (other.items, other.threads) == (2, 2)
    assert [row["tenant"] for row in ledger] == ["acme"]


def _ledger(url: str) -> list[tuple[str, object]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return [(row["tenant"], row["erased_at"]) for row in conn.execute(sql.ERASURES_ALL)]


def _drop_our_tables(url: str) -> None:
    """What a database looked like before the ledger existed: LangGraph's tables only, no alembic."""
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("memory_threads", "memory_tenant_erasures", "memory_job_runs", "memory_quota_limits",
                      "memory_tenant_usage", "memory_api_keys", "memory_job_watermarks", "memory_job_ticks",
                      "alembic_version"):
            conn.execute(f"DROP TABLE {table} CASCADE")
        for statement in sql.QUOTA_DROP:
            conn.execute(statement)


@pytest.mark.parametrize("backup_ledger", ["absent", "older"])
def test_restore_keeps_the_targets_newer_erasures(service, tmp_path, backup_ledger):
    """The backup has no ledger table, or one without the target's later erasures: they survive and replay."""
    populate(service)
    threads = thread_ids(service.database_url, "acme")
    expected = []
    if backup_ledger == "older":
        with connection(service.pool) as conn:
            early = tenants.delete_tenant(conn, "glo_bex")
        expected.append(("glo_bex", early["erased_at"]))
    else:
        _drop_our_tables(service.database_url)
    manifest = create_backup(service.database_url, tmp_path)
    assert ("memory_tenant_erasures" in manifest.tables) is (backup_ledger == "older")
    if backup_ledger == "absent":
        migrations.upgrade(service.database_url)
    with connection(service.pool) as conn:
        later = tenants.delete_tenant(conn, "acme")
    expected.append(("acme", later["erased_at"]))

    report = restore_backup(tmp_path / manifest.file, service.database_url, force=True)

    assert report.erasures_replayed == ["acme"] and report.erasures_kept == len(expected)
    assert [(tenant, erased_at.isoformat()) for tenant, erased_at in _ledger(service.database_url)] == expected
    assert set(counts(service.database_url, "acme", threads).values()) == {0}
    assert migrations.current(service.database_url).at_head


def test_pre_ledger_restore_whose_migration_fails_names_the_erasures_to_record_again(service, tmp_path):
    populate(service)
    _drop_our_tables(service.database_url)
    manifest = create_backup(service.database_url, tmp_path)
    migrations.upgrade(service.database_url)
    with connection(service.pool) as conn:
        tenants.delete_tenant(conn, "acme")

    def failing_upgrade(url: str):
        raise migrations.MigrationError("schema migration failed: disk full")

    with pytest.raises(BackupError, match=r"disk full; .*ledger of acme could not be written back .*restore again"):
        restore_backup(tmp_path / manifest.file, service.database_url, force=True, upgrade=failing_upgrade)
    assert counts(service.database_url, "acme", [])["store"] == 0
    assert [e.tenant for e in erasure.read_receipts([tmp_path])] == ["acme"]


def test_restore_rolls_back_when_the_script_fails(service, pg_server, tmp_path):
    """A failure inside the restore transaction (here: a table the drop cannot remove) changes nothing."""
    populate(service)
    manifest = create_backup(service.database_url, tmp_path)
    name, target = empty_database(pg_server)
    try:
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("CREATE TABLE keepme (id int)")
            conn.execute("CREATE VIEW store AS SELECT id FROM keepme")  # DROP TABLE store fails on a view
        with pytest.raises(BackupError, match="rolled back"):
            restore_backup(tmp_path / manifest.file, target)
        with psycopg.connect(target) as conn:
            assert conn.execute("SELECT to_regclass('checkpoints')").fetchone()[0] is None
            assert conn.execute("SELECT to_regclass('store')").fetchone()[0] == "store"
    finally:
        pg_server.drop_database(name)


def test_keep_prunes_old_backups(service, tmp_path):
    made = [create_backup(service.database_url, tmp_path, keep=2).file for _ in range(3)]
    assert [m.file for m in list_backups(tmp_path)] == made[:0:-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f for f in made[1:]] + [Path(f).with_suffix(".json").name for f in made[1:]]
    )


def test_unknown_manifest_version_is_refused(service, tmp_path):
    manifest = create_backup(service.database_url, tmp_path)
    path = (tmp_path / manifest.file).with_suffix(".json")
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(BackupError, match="format version 99 is not supported"):
        verify_backup(tmp_path / manifest.file)


def test_server_newer_than_every_pg_dump_gets_a_clear_message(tmp_path):
    with pytest.raises(PgToolError, match=r"server runs PostgreSQL 99 but the newest pg_dump found is \d+\.\d+"):
        find_tool("pg_dump", 99)
    with pytest.raises(PgToolError, match="no pg_dump found"):
        find_tool("pg_dump", 15, dirs=[tmp_path])
    assert find_tool("pg_dump", 18).major >= 18


def test_cli_backup_create_list_verify_restore(service, pg_server, tmp_path, monkeypatch):
    populate(service)
    monkeypatch.setenv("MEMORY_DATABASE_URL", service.database_url)
    runner = CliRunner()
    created = runner.invoke(app, ["backup", "create", "--out", str(tmp_path), "--json"])
    assert created.exit_code == 0, created.output
    manifest = json.loads(created.output)
    archive = tmp_path / manifest["file"]
    listed = runner.invoke(app, ["backup", "list", "--dir", str(tmp_path), "--json"])
    assert [m["file"] for m in json.loads(listed.output)] == [manifest["file"]]
    assert runner.invoke(app, ["backup", "verify", str(archive)]).exit_code == 0
    refused = runner.invoke(app, ["backup", "restore", str(archive)])
    assert refused.exit_code == 1 and "--force" in refused.output
    name, target = empty_database(pg_server)
    try:
        restored = runner.invoke(app, ["backup", "restore", str(archive), "--target", target, "--json"])
        assert restored.exit_code == 0, restored.output
        assert checksums(target) == checksums(service.database_url)
    finally:
        pg_server.drop_database(name)


def test_backup_restore_with_pgvector_rows(embedded_server, tmp_path):
    source_name, source = empty_database(embedded_server)
    target_name, target = empty_database(embedded_server)
    try:
        with MemoryService.open(database_url=source, database_pool_max_size=4, index_dims=8, index_embed="fake") as svc:
            svc.setup()
            populate(svc)
            before = checksums(source)
            assert before["store_vectors"][0] == 4
            manifest = create_backup(source, tmp_path)
        assert manifest.tables["store_vectors"] == 4
        restore_backup(tmp_path / manifest.file, target)
        assert checksums(target) == before
    finally:
        embedded_server.drop_database(source_name)
        embedded_server.drop_database(target_name)


def test_backup_job_is_recorded_and_prunes(service, tmp_path):
    with connection(service.pool) as conn:
        first = backup_job(conn, service.database_url, tmp_path, keep=1)
        second = backup_job(conn, service.database_url, tmp_path, keep=1)
        dry = backup_job(conn, service.database_url, tmp_path, keep=1, dry_run=True)
        recorded = conn.execute(
            "SELECT status, dry_run, counts FROM memory_job_runs WHERE job = 'backup' ORDER BY id"
        ).fetchall()
    assert first.status == second.status == "succeeded" and second.counts["pruned"] == 1
    assert dry.counts["would_prune"] == 1 and len(list_backups(tmp_path)) == 1
    assert [(r["status"], r["dry_run"]) for r in recorded] == [("succeeded", False)] * 2 + [("succeeded", True)]
    assert recorded[1]["counts"]["rows"] == second.counts["rows"]


def test_backup_restore_in_a_named_schema(embedded_server, tmp_path):
    from memory.migrations import schema_url

    source_name, source = empty_database(embedded_server)
    target_name, target = empty_database(embedded_server)
    try:
        with MemoryService.open(database_url=source, database_schema="mem", database_pool_max_size=4) as svc:
            svc.setup()
            populate(svc)
            manifest = create_backup(svc.database_url, tmp_path)
            before = checksums(svc.database_url)
        assert manifest.schema == "mem" and before["store"][0] == 4
        with pytest.raises(BackupError, match="holds schema 'mem'"):
            restore_backup(tmp_path / manifest.file, target)
        restore_backup(tmp_path / manifest.file, schema_url(target, "mem"))
        assert checksums(schema_url(target, "mem")) == before
        with psycopg.connect(target) as conn:
            assert conn.execute("SELECT to_regclass('public.store')").fetchone()[0] is None
    finally:
        embedded_server.drop_database(source_name)
        embedded_server.drop_database(target_name)


def test_passwords_reach_the_client_programs_through_the_environment(service, tmp_path, monkeypatch):
    """pg_dump, pg_restore and psql never get the password on their command line (`ps` shows argv)."""
    import subprocess

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from memory.pgtools import connection_args

    url = make_conninfo(**{**conninfo_to_dict(service.database_url), "password": "s3cret-pw"})  # trust auth ignores it
    dbname, env = connection_args(url)
    assert "s3cret-pw" not in dbname and env == {"PGPASSWORD": "s3cret-pw"}

    seen: list[tuple[list[str], dict]] = []
    real_run, real_popen = subprocess.run, subprocess.Popen

    def run(args, *a, **kw):
        seen.append((list(args), kw.get("env") or {}))
        return real_run(args, *a, **kw)

    class Popen(real_popen):
        def __init__(self, args, *a, **kw):
            seen.append((list(args), kw.get("env") or {}))
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(backup.subprocess, "run", run)
    monkeypatch.setattr(backup.subprocess, "Popen", Popen)
    manifest = backup.create_backup(url, tmp_path)
    backup.restore_backup(manifest.path, url, force=True)
    tools = [(args, env) for args, env in seen if Path(args[0]).name in ("pg_dump", "pg_restore", "psql")]
    assert {Path(args[0]).name for args, _ in tools} >= {"pg_dump", "psql"}
    assert not [args for args, _ in tools if any("s3cret-pw" in arg for arg in args)]
    assert all(env.get("PGPASSWORD") == "s3cret-pw" for args, env in tools if any(a.startswith("--dbname") for a in args))
