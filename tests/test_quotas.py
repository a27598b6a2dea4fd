"""Per-tenant quotas, enforced by the database: racing writers cannot overshoot, refusals are tool
errors naming the limit and the usage, nothing partial is stored, other tenants are unaffected."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg.rows import dict_row
from typer.testing import CliRunner

from langgraph.store.postgres import PostgresStore

from memory import MemoryService, TenantMemoryBackend, bind_tenant, quotas
from memory.api.metrics import QuotaCollector
from memory.cli import app
from memory.db import connection
from memory.errors import ConfigError
from memory.quotas import QuotaExceeded, QuotaPolicy
from memory.scripted import tool_call
from memory.tenancy import tenant_namespace
from helpers import run_agent

WRITERS = 32


def usage_rows(url: str) -> dict[str, tuple[int, int]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return {r["tenant"]: (r["files"], r["bytes"]) for r in conn.execute("SELECT * FROM memory_tenant_usage WHERE files <> 0 OR bytes <> 0")}


def recounted(url: str) -> dict[str, tuple[int, int]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT split_part(prefix, '.', 1) AS tenant, count(*) AS files, sum(memory_item_bytes(value)) AS bytes "
            "FROM store GROUP BY 1"
        ).fetchall()
    return {r["tenant"]: (r["files"], int(r["bytes"])) for r in rows}


def files_of(svc: MemoryService, tenant: str) -> dict[str, str]:
    return {item.key: item.value["content"] for item in svc.store.search(tenant_namespace(tenant), limit=1000)}


def test_thirty_two_racing_writers_against_ten_files_leave_exactly_ten(database_url):
    with MemoryService.open(database_url=database_url, database_pool_max_size=WRITERS + 2, quota_max_tenant_files=10) as svc:
        backend = svc.memory_backend()
        barrier = threading.Barrier(WRITERS)
        # One store per writer, as 32 replicas would have: a PostgresStore serializes its own puts
        # behind a lock, so writers sharing one store could never race in the database.
        writers = [
            TenantMemoryBackend(store=PostgresStore(svc.pool), resolver=svc.resolver, policy=svc.policy)
            for _ in range(WRITERS)
        ]

        def write(i: int):
            with bind_tenant("acme"):
                barrier.wait(timeout=60)
                return writers[i].write(f"/race/{i:02d}.md", f"writer {i}\n")

        with ThreadPoolExecutor(max_workers=WRITERS) as pool:
            results = list(pool.map(write, range(WRITERS)))
        refused = [r.error for r in results if r.error]
        assert len(refused) == WRITERS - 10, refused
        assert all("max_tenant_files = 10" in e and "holds 10 files" in e for e in refused), refused[0]
        assert len(files_of(svc, "acme")) == 10
        with bind_tenant("initech"):  # another tenant is unaffected
            assert [backend.write(f"/n{i}.md", "x").error for i in range(10)] == [None] * 10
            assert backend.write("/n10.md", "x").error is not None
        with bind_tenant("acme"):  # overwriting an existing file adds no file
            assert backend.write("/race/" + next(iter(files_of(svc, "acme")))[6:], "again\n").error is None
    assert usage_rows(database_url) == recounted(database_url)


def test_edit_that_would_cross_max_tenant_bytes_is_refused_and_the_file_unchanged(database_url):
    with MemoryService.open(database_url=database_url, quota_max_tenant_bytes=1000) as svc:
        backend = svc.memory_backend()
        with bind_tenant("acme"):
            assert backend.write("/notes.md", "short note\n").error is None
            files, used = usage_rows(database_url)["acme"]
            result = backend.edit("/notes.md", "short", "x" * 2000)
            assert result.error and "max_tenant_bytes = 1,000" in result.error
            assert f"holds 1 file, {used:,} bytes" in result.error
            assert files_of(svc, "acme") == {"/notes.md": "short note\n"}
            assert backend.edit("/notes.md", "short", "long" * 100).error is None  # within the limit
            assert asyncio.run(backend.aedit("/notes.md", "long", "y" * 2000)).error  # async twin refused too
        with bind_tenant("initech"):
            assert backend.write("/big.md", "z" * 800).error is None
    assert usage_rows(database_url) == recounted(database_url)


def test_agent_run_over_quota_gets_tool_errors_and_goes_on(database_url):
    with MemoryService.open(database_url=database_url, quota_max_file_bytes=500, quota_max_tenant_files=2) as svc:
        tools = run_agent(
            svc,
            "acme",
            tool_call("write_file", file_path="/memories/big.md", content="b" * 600),
            tool_call("write_file", file_path="/memories/a.md", content="a"),
            tool_call("write_file", file_path="/memories/b.md", content="b"),
            tool_call("write_file", file_path="/memories/c.md", content="c"),
            tool_call("ls", path="/memories/"),
        )
        big, a, b, c, ls = (str(t.content) for t in tools)
        assert "max_file_bytes = 500" in big and "'/big.md'" in big
        assert "Error" not in a and "Error" not in b
        assert "max_tenant_files = 2" in c and "holds 2 files" in c
        assert "/memories/a.md" in ls and "/memories/c.md" not in ls
        assert sorted(files_of(svc, "acme")) == ["/a.md", "/b.md"]


def test_store_writes_outside_the_backend_are_limited_too(database_url):
    """The HTTP Store API writes with PostgresStore.put/batch: the same limits, a clear message."""
    with MemoryService.open(database_url=database_url, quota_max_tenant_files=3, quota_rules=[{"tenant": "big", "max_tenant_files": 5}]) as svc:
        for i in range(3):
            svc.store.put(("acme", "memories"), f"/k{i}", {"content": "x"})
        with pytest.raises(psycopg.Error) as caught:
            svc.store.put(("acme", "other-namespace"), "/k3", {"content": "x"})
        refused = QuotaExceeded.from_error(caught.value)
        assert refused is not None and refused.detail["limit"] == "max_tenant_files"
        assert str(refused) == "tenant acme is at max_tenant_files = 3 (tenant acme holds 3 files, 3 bytes)".replace(
            "3 bytes", f"{refused.detail['bytes']:,} bytes"
        )
        with pytest.raises(psycopg.Error):  # a batch is all or nothing
            svc.store.batch([__import__("langgraph.store.base", fromlist=["PutOp"]).PutOp(("big", "memories"), f"/b{i}", {"c": i}) for i in range(6)])
        assert files_of(svc, "big") == {}
        for i in range(5):
            svc.store.put(("big", "memories"), f"/b{i}", {"content": "x"})
        with connection(svc.pool) as conn:
            assert quotas.tenant_quota(conn, "big").to_dict() == {
                "tenant": "big", "files": 5, "bytes": usage_rows(database_url)["big"][1],
                "max_file_bytes": 0, "max_tenant_bytes": 0, "max_tenant_files": 5,
            }
            assert quotas.tenants_near_limits(conn) == [("acme", "max_tenant_files"), ("big", "max_tenant_files")]
            near = quotas.near_limits_if_enabled(conn)
        plain = scrape(QuotaCollector(lambda: near))
        assert 'memory_quota_tenants_near_limit{limit="max_tenant_files"} 2.0' in plain and "acme" not in plain
        named = scrape(QuotaCollector(lambda: near, tenant_labels=True))
        assert 'memory_quota_tenant_near_limit{limit="max_tenant_files",tenant="acme"} 1.0' in named


def scrape(collector) -> str:
    """The Prometheus text of one collector, as `/metrics` renders it."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_usage_follows_deletes_sweeps_imports_and_tenant_deletion(database_url, tmp_path):
    from jobs.ttl_cleanup import ttl_cleanup
    from memory import tenants
    from memory.retention import RetentionPolicy

    with MemoryService.open(database_url=database_url) as svc:
        backend = svc.memory_backend()
        for tenant in ("acme", "initech"):
            with bind_tenant(tenant):
                for i in range(5):
                    backend.write(f"/d/{i}.md", f"{tenant} {i}\n" * (i + 1))
                backend.edit("/d/4.md", "4", "four")
                backend.delete("/d/0.md")
        assert usage_rows(database_url) == recounted(database_url)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE store SET expires_at = now() - interval '1 minute' WHERE key = '/d/1.md'")
            ttl_cleanup(conn, RetentionPolicy())
        assert usage_rows(database_url) == recounted(database_url)
        with connection(svc.pool) as conn:
            tenants.export_tenant(conn, "acme", tmp_path / "acme.bundle")
            tenants.delete_tenant(conn, "acme")
            assert usage_rows(database_url) == recounted(database_url) and "acme" not in usage_rows(database_url)
            tenants.import_tenant(conn, tmp_path / "acme.bundle", as_tenant="acme2")
        assert usage_rows(database_url) == recounted(database_url)
        assert usage_rows(database_url)["acme2"][0] == 3
    with MemoryService.open(database_url=database_url, quota_max_tenant_files=2) as svc, connection(svc.pool) as conn:
        with pytest.raises(psycopg.Error) as caught:  # an import over the quota stores nothing
            tenants.import_tenant(conn, tmp_path / "acme.bundle", as_tenant="acme3")
        assert QuotaExceeded.from_error(caught.value) is not None
        assert "acme3" not in usage_rows(database_url) and "acme3" not in recounted(database_url)


def test_shrinking_is_never_refused_even_over_a_lowered_limit(database_url):
    with MemoryService.open(database_url=database_url) as svc:
        with bind_tenant("acme"):
            for i in range(4):
                svc.memory_backend().write(f"/{i}.md", "y" * 300)
    with MemoryService.open(database_url=database_url, quota_max_tenant_files=2, quota_max_tenant_bytes=100, quota_max_file_bytes=200) as svc:
        backend = svc.memory_backend()
        with bind_tenant("acme"):
            assert backend.edit("/0.md", "y" * 300, "y" * 250).error is None
            assert backend.delete("/1.md").error is None
            assert backend.edit("/2.md", "y", "yy").error is not None
            assert backend.write("/new.md", "z").error is not None


def test_policy_rules_and_settings(database_url):
    policy = QuotaPolicy.build({"max_tenant_files": 10}, [{"tenant": "acme", "max_file_bytes": 5}])
    assert policy.limits_for("acme").to_dict() == {"max_file_bytes": 5, "max_tenant_bytes": 0, "max_tenant_files": 10}
    assert policy.limits_for("other").max_file_bytes == 0
    with pytest.raises(ConfigError, match="two rules"):
        QuotaPolicy.build({}, [{"tenant": "a"}, {"tenant": "a"}])
    with pytest.raises(ConfigError, match=r"rules\[0\]"):
        QuotaPolicy.build({}, [{"tenant": "a.b"}])
    with pytest.raises(ConfigError, match="quota"):
        MemoryService.open(database_url=database_url, quota_max_tenant_files=-1).__enter__()


def test_tenant_stats_shows_usage_against_each_limit(database_url, monkeypatch):
    monkeypatch.setenv("MEMORY_DATABASE_URL", database_url)
    monkeypatch.setenv("MEMORY_QUOTA_MAX_TENANT_FILES", "4")
    with MemoryService.open(database_url=database_url, quota_max_tenant_files=4) as svc:
        with bind_tenant("acme"):
            svc.memory_backend().write("/a.md", "hello")
    runner = CliRunner()
    shown = runner.invoke(app, ["tenant", "stats", "acme", "--json"])
    assert shown.exit_code == 0, shown.output
    quota = json.loads(shown.output)["quota"]
    assert quota["files"] == 1 and quota["max_tenant_files"] == 4 and quota["max_tenant_bytes"] == 0
    table = runner.invoke(app, ["tenant", "stats", "acme"])
    assert table.exit_code == 0 and "max_tenant_files" in table.output and "unlimited" in table.output


def test_a_restored_backup_keeps_usage_exact_and_quotas_enforced(service, pg_server, tmp_path):
    from memory.backup import create_backup, restore_backup

    with bind_tenant("acme"):
        for i in range(3):
            service.memory_backend().write(f"/{i}.md", "kept\n")
    manifest = create_backup(service.database_url, tmp_path)
    name = f"memory_restore_{uuid.uuid4().hex[:10]}"
    target = pg_server.create_database(name)
    try:
        restore_backup(tmp_path / manifest.file, target)
        assert usage_rows(target) == recounted(target) == usage_rows(service.database_url)
        with MemoryService.open(database_url=target, quota_max_tenant_files=3) as svc:
            with bind_tenant("acme"):
                assert "max_tenant_files = 3" in svc.memory_backend().write("/3.md", "x").error
    finally:
        pg_server.drop_database(name)
