"""Tenant tooling on real PostgreSQL: list/stats, export -> delete -> import round-trip, clones, refusals."""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import psycopg
import pytest
from deepagents import create_deep_agent
from psycopg.rows import dict_row
from typer.testing import CliRunner

from memory import MemoryService, tenants
from memory.backup import table_checksums
from memory.cli import app
from memory.db import connection
from memory.errors import InvalidTenantId
from memory.scripted import script, tool_call
from memory.erasure import ErasedTenant, NoSuchTenant
from memory.tenants import BundleError
from helpers import run_agent

TENANT_TABLES = ("store", "checkpoints", "checkpoint_blobs", "checkpoint_writes")




def populate(svc: MemoryService) -> None:
    """`glo_bex` next to `gloXbex`: an unescaped LIKE on `glo_bex.%` would match both."""
    for tenant in ("acme", "glo_bex", "gloXbex"):
        for n in range(2):
            run_agent(
                svc,
                tenant,
                tool_call("write_file", file_path=f"/memories/{tenant}-{n}.md", content=f"{tenant} note {n}\n"),
                tool_call("write_file", file_path=f"/memories/deep/{n}.md", content="x" * (n + 1)),
            )


def checksums(svc: MemoryService) -> dict[str, tuple[int, str]]:
    with psycopg.connect(svc.database_url, row_factory=dict_row) as conn:
        return table_checksums(conn, TENANT_TABLES)


def tenant_rows(svc: MemoryService, tenant: str) -> list[tuple]:
    """A tenant's items, as (namespace, key, content) sorted, through the store's own API."""
    items = svc.store.search((tenant,), limit=10_000)
    return sorted((tuple(i.namespace), i.key, i.value["content"]) for i in items)


def stats(svc: MemoryService, tenant: str) -> tenants.TenantStats:
    with connection(svc.pool) as conn:
        return tenants.tenant_stats(conn, tenant)


def test_list_and_stats(service):
    populate(service)
    with connection(service.pool) as conn:
        listed = {s.tenant: s for s in tenants.list_tenants(conn)}
    assert set(listed) == {"acme", "glo_bex", "gloXbex"}
    acme = stats(service, "acme")
    assert (acme.items, acme.threads) == (4, 2) and acme.checkpoints > 2 and acme.bytes > 0 and acme.last_write
    usage = {u.tenant: u.bytes for u in service.memory_usage()}
    assert acme.bytes == usage["acme"]  # one meaning of "bytes": content bytes, as memory_usage() counts them
    assert listed["acme"] == acme
    with pytest.raises(InvalidTenantId, match="contains '%'"):
        stats(service, "a%")


def test_export_replace_import_round_trips_exactly_and_delete_erases(service, tmp_path):
    populate(service)
    before = checksums(service)
    bundle = tmp_path / "acme.bundle"
    with connection(service.pool) as conn:
        manifest = tenants.export_tenant(conn, "acme", bundle)
        assert manifest["sections"]["items"]["rows"] == 4 and manifest["threads"] == 2 and manifest["erasures"] == []

        report = tenants.import_tenant(conn, bundle, mode="replace")  # every acme row removed, then written back
        assert sum(report.removed.values()) > 4 and (report.items_inserted, report.threads) == (4, 2)
        assert checksums(service) == before

        receipt = tenants.delete_tenant(conn, "acme")
        assert receipt["tenant"] == "acme" and receipt["counts"]["items"] == 4 and receipt["counts"]["threads"] == 2
        ledger = conn.execute("SELECT tenant, counts FROM memory_tenant_erasures").fetchall()
        assert ledger == [{"tenant": "acme", "counts": receipt["counts"]}]
        with pytest.raises(NoSuchTenant, match="no such tenant: acme"):
            stats(service, "acme")
        assert stats(service, "glo_bex").items == 4 and stats(service, "gloXbex").items == 4
        erased = checksums(service)
        with pytest.raises(ErasedTenant, match=f"receipt {receipt['receipt']}"):
            tenants.import_tenant(conn, bundle)  # the bundle predates the erasure
    assert checksums(service) == erased


def test_export_import_and_delete_report_progress_matching_the_bundle(service, tmp_path, monkeypatch):
    """Every progress call of a section carries the bundle's row count as total and ends at it."""
    monkeypatch.setattr(tenants, "PROGRESS_EVERY", 3)
    populate(service)
    run_agent(service, "acme", *[tool_call("write_file", file_path=f"/memories/more-{n}.md", content="x\n") for n in range(4)])
    bundle = tmp_path / "acme.bundle"
    exported, erased, imported = [], [], []
    with connection(service.pool) as conn:
        manifest = tenants.export_tenant(conn, "acme", bundle, on_step=lambda *call: exported.append(call))
        tenants.import_tenant(conn, bundle, mode="replace", on_step=lambda *call: imported.append(call))
        tenants.delete_tenant(conn, "acme", on_step=lambda *call: erased.append(call))
    rows = {name: meta["rows"] for name, meta in manifest["sections"].items()}
    assert rows["items"] == 8 and rows["checkpoints"] > 3 and rows["checkpoint_blobs"] > 0

    for verb, calls in (("export", exported), ("import", imported)):
        steps = list(dict.fromkeys(step for step, _, _ in calls if step.startswith(verb)))
        assert steps == [f"{verb} {name}" for name in tenants.SECTIONS]
        for name, count in rows.items():
            progress = [(done, total) for step, done, total in calls if step == f"{verb} {name}"]
            assert {total for _, total in progress} == {count}, (verb, name, progress)
            dones = [done for done, _ in progress]
            assert dones == sorted(dones) and dones[0] == 0 and dones[-1] == count
        assert [done for step, done, _ in calls if step == f"{verb} items"] == [0, 3, 6, 8]
    assert erased == [("erase acme (tables)", done, 5) for done in range(6)]


def test_delete_with_underscore_does_not_touch_lookalike_tenant(service):
    populate(service)
    keep = tenant_rows(service, "gloXbex")
    with connection(service.pool) as conn:
        receipt = tenants.delete_tenant(conn, "glo_bex")
    assert receipt["counts"]["items"] == 4
    assert tenant_rows(service, "gloXbex") == keep and tenant_rows(service, "glo_bex") == []


def test_import_as_clones_without_touching_the_source(service, tmp_path):
    populate(service)
    before = checksums(service)
    bundle = tmp_path / "acme.bundle"
    with connection(service.pool) as conn:
        tenants.export_tenant(conn, "acme", bundle)
        dry = tenants.import_tenant(conn, bundle, as_tenant="acme2", dry_run=True)
        assert dry.items_inserted == 4 and checksums(service) == before
        report = tenants.import_tenant(conn, bundle, as_tenant="acme2")
        again = tenants.import_tenant(conn, bundle, as_tenant="acme2")
        threads = conn.execute(
            "SELECT DISTINCT thread_id FROM checkpoints WHERE metadata->>'assistant_id' = 'acme2'"
        ).fetchall()
        source_threads = conn.execute(
            "SELECT DISTINCT thread_id FROM checkpoints WHERE metadata->>'assistant_id' = 'acme'"
        ).fetchall()
    assert report.items_inserted == 4 and report.threads == 2
    assert again.items_inserted == again.checkpoints_inserted == 0 and again.items_kept == 4
    assert [(ns[1:], k, c) for ns, k, c in tenant_rows(service, "acme2")] == [
        (ns[1:], k, c) for ns, k, c in tenant_rows(service, "acme")
    ]
    assert {r["thread_id"] for r in threads}.isdisjoint({r["thread_id"] for r in source_threads})
    assert len(threads) == 2
    after = checksums(service)
    with connection(service.pool) as conn:
        tenants.delete_tenant(conn, "acme2")
    assert checksums(service) == before != after


def test_cloned_thread_loads_with_new_tenant(service, tmp_path):
    populate(service)
    bundle = tmp_path / "acme.bundle"
    with connection(service.pool) as conn:
        tenants.export_tenant(conn, "acme", bundle)
        tenants.import_tenant(conn, bundle, as_tenant="acme2")
        source = conn.execute(
            "SELECT thread_id FROM checkpoints WHERE metadata->>'assistant_id' = 'acme' LIMIT 1"
        ).fetchone()["thread_id"]
    clone = str(uuid.uuid5(tenants.CLONE_NAMESPACE, f"acme2/{source}"))
    agent = create_deep_agent(model=script("done"), backend=service.backend(), store=service.store,
                              checkpointer=service.checkpointer)
    original = agent.get_state({"configurable": {"thread_id": source}, "metadata": {"assistant_id": "acme"}})
    cloned = agent.get_state({"configurable": {"thread_id": clone}, "metadata": {"assistant_id": "acme2"}})
    assert cloned.metadata["assistant_id"] == "acme2" and original.metadata["assistant_id"] == "acme"
    assert [m.content for m in cloned.values["messages"]] == [m.content for m in original.values["messages"]]
    assert len(cloned.values["messages"]) > 2


def test_merge_keeps_newer_items_and_replace_restores_the_bundle(service, tmp_path):
    populate(service)
    bundle = tmp_path / "acme.bundle"
    with connection(service.pool) as conn:
        tenants.export_tenant(conn, "acme", bundle)
    run_agent(service, "acme", tool_call("write_file", file_path="/memories/acme-0.md", content="newer\n"))
    run_agent(service, "acme", tool_call("write_file", file_path="/memories/extra.md", content="extra\n"))
    newer = tenant_rows(service, "acme")
    with connection(service.pool) as conn:
        merged = tenants.import_tenant(conn, bundle, mode="merge")
        assert (merged.items_inserted, merged.items_updated, merged.items_kept) == (0, 0, 4)
        assert tenant_rows(service, "acme") == newer
        replaced = tenants.import_tenant(conn, bundle, mode="replace")
    assert replaced.removed["items"] == 5 and replaced.items_inserted == 4
    contents = {k: c for _, k, c in tenant_rows(service, "acme")}
    assert contents["/acme-0.md"] == "acme note 0\n" and "/extra.md" not in contents
    assert stats(service, "acme").threads == 2


def _rewrite_bundle(src, dst, change) -> None:
    with tarfile.open(src, "r:gz") as tar:
        files = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    files = change(files)
    with tarfile.open(dst, "w:gz") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _manifest_version(files):
    manifest = json.loads(files[0][1])
    manifest["version"] = 2
    return [("manifest.json", json.dumps(manifest).encode())] + files[1:]


def _altered_items(files):
    return [(n, d.replace(b"acme note 0", b"acme note X") if n == "items.jsonl" else d) for n, d in files]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("garbage", "not a tenant bundle"),
        ("truncated", "truncated or damaged|not a tenant bundle"),
        ("version", "format version 2 is not supported"),
        ("altered", "section items has sha256"),
        ("revision", "exported at schema revision"),
    ],
)
def test_bad_bundle_is_refused_with_nothing_changed(service, tmp_path, damage, message):
    populate(service)
    good = tmp_path / "acme.bundle"
    with connection(service.pool) as conn:
        tenants.export_tenant(conn, "acme", good)
        tenants.delete_tenant(conn, "acme")
    bad = tmp_path / "bad.bundle"
    if damage == "garbage":
        bad.write_bytes(b"this is not a bundle\x00\xff" * 100)
    elif damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "version":
        _rewrite_bundle(good, bad, _manifest_version)
    elif damage == "altered":
        _rewrite_bundle(good, bad, _altered_items)
    else:
        def old_revision(files):
            manifest = json.loads(files[0][1])
            manifest["schema_revision"] = "0000000000ff"
            return [("manifest.json", json.dumps(manifest).encode())] + files[1:]

        _rewrite_bundle(good, bad, old_revision)
    before = checksums(service)
    with connection(service.pool) as conn, pytest.raises(BundleError, match=message):
        tenants.import_tenant(conn, bad, as_tenant="acme")
    assert checksums(service) == before

    result = CliRunner().invoke(app, ["tenant", "import", str(bad)], env={"MEMORY_DATABASE_URL": service.database_url})
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error:")
    assert checksums(service) == before


@pytest.mark.servers("pg18")  # CLI wiring; the library tests cover its SQL on both servers
def test_cli_tenant_commands(service, tmp_path):
    populate(service)
    env = {"MEMORY_DATABASE_URL": service.database_url}
    runner = CliRunner()
    listed = runner.invoke(app, ["tenant", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert sorted(t["tenant"] for t in json.loads(listed.output)) == ["acme", "gloXbex", "glo_bex"]
    stats_out = runner.invoke(app, ["tenant", "stats", "acme", "--json"], env=env)
    assert json.loads(stats_out.output)["items"] == 4
    bundle = tmp_path / "acme.bundle"
    exported = runner.invoke(app, ["tenant", "export", "acme", "-o", str(bundle), "--json"], env=env)
    assert exported.exit_code == 0 and json.loads(exported.output)["tenant"] == "acme"
    refused = runner.invoke(app, ["tenant", "delete", "acme"], env=env)
    assert refused.exit_code == 1 and "--yes" in refused.output and stats(service, "acme").items == 4
    deleted = runner.invoke(app, ["tenant", "delete", "acme", "--yes", "--json"], env=env)
    assert deleted.exit_code == 0 and json.loads(deleted.output)["counts"]["items"] == 4
    refused = runner.invoke(app, ["tenant", "import", str(bundle), "--dry-run", "--json"], env=env)
    assert refused.exit_code == 1 and "exported before acme's erasure" in refused.output
    dry = runner.invoke(app, ["tenant", "import", str(bundle), "--as", "acme3", "--dry-run", "--json"], env=env)
    assert json.loads(dry.output)["items_inserted"] == 4
    imported = runner.invoke(app, ["tenant", "import", str(bundle), "--as", "acme3"], env=env)
    assert imported.exit_code == 0 and "imported acme as acme3" in imported.output
    assert stats(service, "acme3").items == 4
    with pytest.raises(NoSuchTenant):
        stats(service, "acme")
    bad_mode = runner.invoke(app, ["tenant", "import", str(bundle), "--mode", "overwrite"], env=env)
    assert bad_mode.exit_code == 1 and "--mode 'overwrite'" in bad_mode.output


@pytest.mark.servers("pg18")  # CLI wiring; the library tests cover its SQL on both servers
def test_cli_progress_bars_on_a_terminal_and_pure_json_with_json(service, tmp_path, monkeypatch):
    from rich.console import Console

    from memory import cli

    populate(service)
    monkeypatch.setattr(cli, "console", Console(force_terminal=True, width=120))  # stdout as a terminal
    env = {"MEMORY_DATABASE_URL": service.database_url}
    runner = CliRunner()
    bundle = tmp_path / "acme.bundle"
    shown = runner.invoke(app, ["tenant", "export", "acme", "-o", str(bundle)], env=env)
    assert shown.exit_code == 0, shown.output
    assert "export items" in shown.output and "4/4" in shown.output and "exported acme" in shown.output
    for command in (["tenant", "export", "acme", "-o", str(bundle)], ["tenant", "import", str(bundle)],
                    ["tenant", "delete", "glo_bex", "--yes"]):
        quiet = runner.invoke(app, [*command, "--json"], env=env)
        assert quiet.exit_code == 0, quiet.output
        assert isinstance(json.loads(quiet.output), dict) and "\x1b" not in quiet.output
    erased = runner.invoke(app, ["tenant", "delete", "acme", "--yes"], env=env)
    assert "erase acme (tables)" in erased.output and "5/5" in erased.output and "erased tenant acme" in erased.output


def test_round_trip_and_clone_with_vectors(embedded_server, tmp_path):
    name = f"memory_vec_{uuid.uuid4().hex[:10]}"
    url = embedded_server.create_database(name)
    try:
        with MemoryService.open(database_url=url, database_pool_max_size=4, index_dims=8, index_embed="fake") as svc:
            svc.setup()
            populate(svc)
            before = table_checksums_all(svc)
            bundle = tmp_path / "acme.bundle"
            with connection(svc.pool) as conn:
                manifest = tenants.export_tenant(conn, "acme", bundle)
                assert manifest["sections"]["vectors"]["rows"] == 4
                assert tenants.import_tenant(conn, bundle, mode="replace").vectors == 4
                assert table_checksums_all(svc) == before
                assert tenants.delete_tenant(conn, "acme")["counts"]["vectors"] == 4
                assert tenants.import_tenant(conn, bundle, as_tenant="acme2").vectors == 4
            hits = svc.store.search(("acme2", "memories"), query="acme note 0", limit=1)
            assert hits and hits[0].key == "/acme-0.md" and hits[0].score is not None
    finally:
        embedded_server.drop_database(name)


def table_checksums_all(svc: MemoryService) -> dict[str, tuple[int, str]]:
    with psycopg.connect(svc.database_url, row_factory=dict_row) as conn:
        return table_checksums(conn, TENANT_TABLES + ("store_vectors",))


def test_a_bundle_without_vectors_is_embedded_on_import_into_an_indexed_store(local_pg15, embedded_server, tmp_path):
    """PG 15 here has no pgvector: its bundle carries no vectors. Imported into an indexed store (CLI and
    library), every item gets the store's own vectors and semantic search finds it; items of an indexed
    bundle that carry no vectors (put with `index=False`) stay unindexed."""
    plain = f"memory_plain_{uuid.uuid4().hex[:10]}"
    indexed = f"memory_idx_{uuid.uuid4().hex[:10]}"
    plain_url = local_pg15.create_database(plain)
    url = embedded_server.create_database(indexed)
    bundle = tmp_path / "acme.bundle"
    try:
        with MemoryService.open(database_url=plain_url, database_pool_max_size=4) as svc:
            svc.setup()
            populate(svc)
            with connection(svc.pool) as conn:
                assert tenants.export_tenant(conn, "acme", bundle)["indexed"] is False
        env = {"MEMORY_DATABASE_URL": url, "MEMORY_INDEX_DIMS": "8", "MEMORY_INDEX_EMBED": "fake"}
        with MemoryService.open(database_url=url, database_pool_max_size=4, index_dims=8, index_embed="fake") as svc:
            svc.setup()
            done = CliRunner().invoke(app, ["tenant", "import", str(bundle)], env=env)
            assert done.exit_code == 0, done.output
            assert "4 vectors (4 embedded here)" in done.output, done.output
            hits = svc.store.search(("acme", "memories"), query="acme note 1", limit=1)
            assert hits and hits[0].key == "/acme-1.md" and hits[0].score is not None
            with connection(svc.pool) as conn:
                report = tenants.import_tenant(conn, bundle, as_tenant="acme2", embed=svc.embedder())
                assert (report.vectors, report.vectors_embedded) == (0, 4)
                assert tenants.import_tenant(conn, bundle, as_tenant="acme3").vectors_embedded == 0  # no embedder
                svc.store.put(("acme", "memories"), "/raw.md", {"content": "acme note 1"}, index=False)
                again = tmp_path / "again.bundle"
                assert tenants.export_tenant(conn, "acme", again)["indexed"] is True
                report = tenants.import_tenant(conn, again, mode="replace", embed=svc.embedder())
                assert (report.vectors, report.vectors_embedded) == (4, 0)
                vectored = conn.execute("SELECT DISTINCT key FROM store_vectors WHERE prefix = 'acme.memories'").fetchall()
            assert "/raw.md" not in {row["key"] for row in vectored}
    finally:
        local_pg15.drop_database(plain)
        embedded_server.drop_database(indexed)
