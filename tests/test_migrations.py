"""The schema in one repeatable step: alembic revisions + LangGraph's setup(), on real servers.

Every test that migrates gets its own empty database (not the template clone) and drops it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from deepagents import create_deep_agent
from langchain_core.messages import ToolMessage
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.store.postgres import PostgresStore
from psycopg.rows import dict_row
from typer.testing import CliRunner

from memory import MemoryService, MemorySettings, migrations, sql
from memory.cli import app
from memory.db import CONNECTION_KWARGS, describe_url
from memory.errors import ConfigError, DatabaseUnavailable
from memory.saver import TenantPostgresSaver
from memory.scripted import script, tool_call
from memory.vectors import PgvectorMissing, index_config

LANGGRAPH_TABLES = {
    "store",
    "store_migrations",
    "checkpoints",
    "checkpoint_blobs",
    "checkpoint_writes",
    "checkpoint_migrations",
}
OUR_TABLES = {"memory_job_runs", "memory_tenant_erasures", "memory_threads"}
CHECKPOINT_INDEXES = {"memory_checkpoints_ts_idx", "memory_checkpoints_assistant_id_idx"}

SNAPSHOT_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid) AS default_expr
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
 WHERE n.nspname = %(schema)s AND c.relkind = 'r'
 ORDER BY 1, 2
"""
SNAPSHOT_INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %(schema)s ORDER BY 1"
SNAPSHOT_CONSTRAINTS = """
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = %(schema)s::regnamespace ORDER BY 1, 2
"""


@pytest.fixture
def empty_db(pg_server) -> Iterator[str]:
    """A new, empty database (no template): the URL; dropped afterwards."""
    name = f"memory_mig_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


def tables(url: str, schema: str = "public") -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    return {r[0] for r in rows}


def snapshot(url: str, schema: str = "public") -> dict:
    """Every column, index and constraint of the schema, plus the migration bookkeeping."""
    with psycopg.connect(url) as conn:
        params = {"schema": schema}
        snap = {
            "columns": conn.execute(SNAPSHOT_COLUMNS, params).fetchall(),
            "indexes": conn.execute(SNAPSHOT_INDEXES, params).fetchall(),
            "constraints": conn.execute(SNAPSHOT_CONSTRAINTS, params).fetchall(),
        }
        for table in ("store_migrations", "checkpoint_migrations", "alembic_version"):
            query = f'SELECT * FROM "{schema}"."{table}" ORDER BY 1'
            snap[table] = conn.execute(query).fetchall()
    return snap


def put_agent_data(url: str) -> None:
    """A memory item and a real checkpoint, written by LangGraph's own classes (our tenant-aware
    saver once the ownership table exists: its thread then has an owner)."""
    with psycopg.connect(url, **CONNECTION_KWARGS) as conn:
        PostgresStore(conn).put(("acme", "memories"), "/keep.md", {"content": "keep me", "encoding": "utf-8"})
        owned = conn.execute(sql.OWNERSHIP_PRESENT).fetchone()["present"]
        saver = TenantPostgresSaver(conn) if owned else PostgresSaver(conn)
        config = {"configurable": {"thread_id": "t-keep", "checkpoint_ns": ""}, "metadata": {"assistant_id": "acme"}}
        checkpoint = {
            "v": 4,
            "id": "1f0a0000-0000-6000-8000-000000000001",
            "ts": "2026-01-01T00:00:00+00:00",
            "channel_values": {},
            "channel_versions": {},
            "versions_seen": {},
        }
        saver.put(config, checkpoint, {"source": "input", "step": -1, "assistant_id": "acme"}, {})


def agent_data(url: str) -> tuple:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        item = conn.execute("SELECT prefix, key, value->>'content' AS content FROM store").fetchall()
        ckpt = conn.execute("SELECT thread_id, metadata->>'assistant_id' AS tenant FROM checkpoints").fetchall()
    return item, ckpt


# -- upgrade, idempotence, round trip -----------------------------------------------------------


def test_upgrade_builds_the_whole_schema_on_an_empty_database(empty_db):
    assert migrations.current(empty_db).revision is None

    state = migrations.upgrade(empty_db)

    assert state.at_head and state.before is None and state.changed
    assert state.label() == f"{state.head} (head)"
    assert LANGGRAPH_TABLES | OUR_TABLES | {"alembic_version"} <= tables(empty_db)
    with psycopg.connect(empty_db) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'checkpoints'")}
        columns = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'memory_job_runs'"
            ).fetchall()
        )
        job_index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_memory_job_runs_job_started_at'"
        ).fetchone()[0]
        # the contract other work writes to
        run_id = conn.execute(
            "INSERT INTO memory_job_runs (job, started_at, status, dry_run, host, counts, tenant_counts) "
            "VALUES ('ttl-cleanup', now(), 'succeeded', false, 'h', '{\"deleted\": 3}', "
            "'{\"acme\": {\"deleted\": 3}}') RETURNING id"
        ).fetchone()[0]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO memory_job_runs (job, status) VALUES ('x', 'exploded')")
    assert CHECKPOINT_INDEXES <= indexes
    assert columns == {
        "id": "bigint",
        "job": "text",
        "started_at": "timestamp with time zone",
        "finished_at": "timestamp with time zone",
        "status": "text",
        "dry_run": "boolean",
        "host": "text",
        "counts": "jsonb",
        "tenant_counts": "jsonb",
        "error": "text",
    }
    assert "(job, started_at DESC)" in job_index
    assert run_id == 1
    assert migrations.current(empty_db).at_head


def test_upgrade_twice_is_a_no_op(empty_db):
    migrations.upgrade(empty_db)
    before = snapshot(empty_db)

    again = migrations.upgrade(empty_db)

    assert again.at_head and not again.changed
    assert snapshot(empty_db) == before


def test_downgrade_then_upgrade_round_trips_and_keeps_agent_data(empty_db):
    migrations.upgrade(empty_db)
    put_agent_data(empty_db)
    at_head = snapshot(empty_db)
    data = agent_data(empty_db)

    down = migrations.downgrade(empty_db, "base")

    assert down.revision is None and down.before == down.head
    remaining = tables(empty_db)
    assert not (OUR_TABLES & remaining)
    assert LANGGRAPH_TABLES <= remaining
    with psycopg.connect(empty_db) as conn:
        left = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'checkpoints'")}
    assert not (CHECKPOINT_INDEXES & left)
    assert agent_data(empty_db) == data

    up = migrations.upgrade(empty_db)

    assert up.at_head and up.before is None
    assert snapshot(empty_db) == at_head
    assert agent_data(empty_db) == data


def test_autogenerate_against_head_finds_no_difference_in_our_tables(empty_db):
    migrations.upgrade(empty_db)
    assert migrations.schema_diff(empty_db) == []

    # ...and it does look: a column missing from the database shows up
    with psycopg.connect(empty_db) as conn:
        conn.execute("ALTER TABLE memory_job_runs DROP COLUMN host")
    diff = migrations.schema_diff(empty_db)
    assert [(d[0], d[3].name) for d in diff if d[0] == "add_column"] == [("add_column", "host")]


def test_upgrade_over_tables_made_by_plain_langgraph_setup_keeps_the_data(empty_db):
    with psycopg.connect(empty_db, **CONNECTION_KWARGS) as conn:
        PostgresStore(conn).setup()
        PostgresSaver(conn).setup()
    put_agent_data(empty_db)
    data = agent_data(empty_db)
    assert data[0] and data[1]

    state = migrations.upgrade(empty_db)

    assert state.at_head and state.before is None
    assert agent_data(empty_db) == data
    assert OUR_TABLES <= tables(empty_db)
    assert migrations.schema_diff(empty_db) == []


def test_concurrent_upgrades_of_one_database_take_turns(empty_db):
    results: list[object] = []

    def run() -> None:
        try:
            results.append(migrations.upgrade(empty_db))
        except Exception as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert all(isinstance(r, migrations.SchemaState) and r.at_head for r in results), results
    assert sum(r.changed for r in results) == 1


def test_service_setup_is_upgrade_to_head(empty_db):
    with MemoryService.open(database_url=empty_db, database_pool_max_size=2) as svc:
        first = svc.setup()
        second = svc.setup()
        svc.store.put(("acme", "memories"), "/a.md", {"content": "x", "encoding": "utf-8"})
    assert first.at_head and first.changed
    assert second.at_head and not second.changed


def test_async_service_setup_is_upgrade_to_head(empty_db):
    async def scenario():
        async with MemoryService.aopen(database_url=empty_db, database_pool_max_size=2) as svc:
            state = await svc.asetup()
            await svc.store.aput(("acme", "memories"), "/a.md", {"content": "x", "encoding": "utf-8"})
            return state, (await svc.store.aget(("acme", "memories"), "/a.md")).value["content"]

    state, content = asyncio.run(scenario())
    assert state.at_head and content == "x"


def test_unknown_revision_is_one_clear_error(empty_db):
    migrations.upgrade(empty_db)
    with pytest.raises(migrations.MigrationError, match="downgrade nope: Can't locate revision identified by 'nope'"):
        migrations.downgrade(empty_db, "nope")


# -- non-default schema, PgBouncer-style connections ---------------------------------------------


def run_agent(svc: MemoryService, tenant: str, *calls) -> list[ToolMessage]:
    agent = create_deep_agent(
        model=script(*calls, "done"),
        backend=svc.backend(),
        store=svc.store,
        checkpointer=svc.checkpointer,
        system_prompt=svc.system_prompt("You are a test assistant."),
    )
    config = {"configurable": {"thread_id": uuid.uuid4().hex}, "metadata": {"assistant_id": tenant}}
    result = agent.invoke({"messages": [{"role": "user", "content": "go"}]}, config=config)
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def test_non_default_schema_end_to_end_without_prepared_statements(empty_db):
    with MemoryService.open(
        database_url=empty_db,
        database_schema="memory",
        database_prepare_threshold=None,  # PgBouncer in transaction mode
        database_pool_max_size=4,
    ) as svc:
        state = svc.setup()
        tools = run_agent(
            svc,
            "acme",
            tool_call("write_file", file_path="/memories/prefs.md", content="likes tea\n"),
            tool_call("read_file", file_path="/memories/prefs.md"),
        )
        with svc.pool.connection() as conn:
            assert conn.prepare_threshold is None
            assert conn.execute("SHOW search_path").fetchone()["search_path"] == "memory,public"
        current = migrations.current(svc.database_url, schema="memory")

    assert state.at_head and current.at_head
    assert [t.status for t in tools] == ["success", "success"]
    assert "likes tea" in tools[1].content
    assert LANGGRAPH_TABLES | OUR_TABLES | {"alembic_version"} <= tables(empty_db, "memory")
    assert tables(empty_db, "public") == set()  # nothing leaked into public
    with psycopg.connect(empty_db) as conn:
        stored = conn.execute("SELECT prefix, key FROM memory.store").fetchall()
        threads = conn.execute("SELECT count(*) FROM memory.checkpoints").fetchone()[0]
    assert stored == [("acme.memories", "/prefs.md")]
    assert threads > 0
    assert migrations.schema_diff(empty_db, schema="memory") == []


def test_schema_url_sets_search_path_and_keeps_other_options():
    url = "postgresql://u:p%40ss@h:5433/db?sslmode=require&options=-c%20statement_timeout%3D5000"
    out = migrations.schema_url(url, "memory")
    assert out.startswith("postgresql://u:p%40ss@h:5433/db?sslmode=require&options=")
    info = psycopg.conninfo.conninfo_to_dict(out)
    assert info["options"] == "-c statement_timeout=5000 -c search_path=memory,public"
    assert info["sslmode"] == "require" and info["password"] == "p@ss"
    # applying it again replaces the search_path rather than stacking a second one
    assert psycopg.conninfo.conninfo_to_dict(migrations.schema_url(out, "other"))["options"] == (
        "-c statement_timeout=5000 -c search_path=other,public"
    )
    assert migrations.schema_url(url, "public") == url


def test_schema_and_prepare_threshold_settings_are_validated():
    assert MemorySettings.load(database_prepare_threshold="none").database_prepare_threshold is None
    assert MemorySettings.load(database_prepare_threshold=5).database_prepare_threshold == 5
    with pytest.raises(ConfigError, match=r"\[database\] schema .*plain lowercase identifier"):
        MemorySettings.load(database_schema='memory"; DROP TABLE store; --')


# -- vector index --------------------------------------------------------------------------------


@pytest.fixture
def pg15_empty_db(local_pg15) -> Iterator[str]:
    name = f"memory_mig_{uuid.uuid4().hex[:12]}"
    url = local_pg15.create_database(name)
    yield url
    local_pg15.drop_database(name)


@pytest.fixture
def pg18_empty_db(embedded_server) -> Iterator[str]:
    name = f"memory_mig_{uuid.uuid4().hex[:12]}"
    url = embedded_server.create_database(name)
    yield url
    embedded_server.drop_database(name)


def test_vector_config_on_a_server_without_pgvector_is_one_clear_error(pg15_empty_db):
    with psycopg.connect(pg15_empty_db) as conn:
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
            pytest.skip("this PostgreSQL has pgvector")
    host = psycopg.conninfo.conninfo_to_dict(pg15_empty_db)["host"]

    with MemoryService.open(database_url=pg15_empty_db, index_dims=16, index_embed="fake") as svc:
        with pytest.raises(PgvectorMissing) as caught:
            svc.setup()

    message = str(caught.value)
    assert "\n" not in message
    assert f"the server at {host}:" in message and "has no pgvector extension" in message
    assert "install pgvector there or set [index] dims = 0" in message
    assert tables(pg15_empty_db) == set()  # refused before touching anything

    runner = CliRunner()
    result = runner.invoke(
        app, ["db", "upgrade"], env={"MEMORY_DATABASE_URL": pg15_empty_db, "MEMORY_INDEX_DIMS": "16", "MEMORY_INDEX_EMBED": "fake"}
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {message}"]


def test_vector_config_creates_pgvector_tables_and_search_works(pg18_empty_db):
    with MemoryService.open(database_url=pg18_empty_db, index_dims=16, index_embed="fake") as svc:
        state = svc.setup()
        ns = ("acme", "memories")
        svc.store.put(ns, "/tea.md", {"content": "likes green tea", "encoding": "utf-8"})
        svc.store.put(ns, "/bike.md", {"content": "rides a bike", "encoding": "utf-8"})
        hits = svc.store.search(ns, query="likes green tea", limit=1)
    assert state.at_head
    assert {"store_vectors", "vector_migrations"} <= tables(pg18_empty_db)
    assert [h.key for h in hits] == ["/tea.md"]  # shared words, close vectors
    with psycopg.connect(pg18_empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM store_vectors").fetchone()[0] == 2


def test_vectors_switched_on_later_and_dims_changed(pg18_empty_db):
    migrations.upgrade(pg18_empty_db)
    assert "store_vectors" not in tables(pg18_empty_db)

    state = migrations.upgrade(pg18_empty_db, index=index_config(16, "fake", ["content"]))

    assert not state.changed  # same alembic revision; LangGraph's vector migrations ran
    assert "store_vectors" in tables(pg18_empty_db)
    with pytest.raises(ConfigError, match=r"\[index\] dims = 32 but store_vectors .* holds 16-dimension vectors"):
        migrations.upgrade(pg18_empty_db, index=index_config(32, "fake", ["content"]))


def test_vector_config_without_embedding_model_is_a_config_error():
    with pytest.raises(ConfigError, match=r"\[index\] dims is set but \[index\] embed is empty"):
        index_config(16, "", ["content"])


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_upgrade_current_downgrade(empty_db):
    runner = CliRunner()
    env = {"MEMORY_DATABASE_URL": empty_db}
    where = describe_url(empty_db)
    head = migrations.current(empty_db).head

    current = runner.invoke(app, ["db", "current"], env=env)
    assert current.exit_code == 0, current.output
    assert current.output.strip() == f"<none> (head is {head}; run `memory db upgrade`)"

    up = runner.invoke(app, ["db", "upgrade"], env=env)
    assert up.exit_code == 0, up.output
    assert up.output.strip().splitlines() == [f"upgraded {where} from <none> to {head} (head)"]

    again = runner.invoke(app, ["db", "upgrade"], env=env)
    assert again.output.strip().splitlines() == [f"{where} is at {head} (head); nothing to upgrade"]

    current = runner.invoke(app, ["db", "current"], env=env)
    assert current.output.strip() == f"{head} (head)"

    down = runner.invoke(app, ["db", "downgrade", "base"], env=env)
    assert down.exit_code == 0, down.output
    assert down.output.strip() == f"downgraded {where} from {head} (head) to <none>"

    as_json = runner.invoke(app, ["db", "current", "--json"], env=env)
    assert as_json.output.strip() == f'{{"revision": null, "head": "{head}", "at_head": false, "before": null, "unattributed_threads": []}}'


def test_cli_upgrade_on_an_unreachable_url_is_one_line_and_fails():
    runner = CliRunner()
    result = runner.invoke(app, ["db", "upgrade"], env={"MEMORY_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"})
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot connect to PostgreSQL at 127.0.0.1:1/nowhere")


# -- through a real PgBouncer (transaction pooling), when the machine has one ----------------------


def test_pgbouncer_refusing_the_options_parameter_is_one_clear_line(pgbouncer, pg15_empty_db):
    base = pgbouncer(ignore_options=False)
    url = f"{base}/{psycopg.conninfo.conninfo_to_dict(pg15_empty_db)['dbname']}"
    with pytest.raises(DatabaseUnavailable, match="unsupported startup parameter: options") as caught:
        with MemoryService.open(database_url=url, database_schema="memory", database_prepare_threshold=None):
            pass
    assert "\n" not in str(caught.value)


def test_non_default_schema_through_pgbouncer_transaction_pooling(pgbouncer, pg15_empty_db):
    base = pgbouncer(ignore_options=True)  # PgBouncer drops `options`: the role's setting must give the path
    dbname = psycopg.conninfo.conninfo_to_dict(pg15_empty_db)["dbname"]
    url = f"{base}/{dbname}"
    settings = {"database_url": url, "database_schema": "memory", "database_prepare_threshold": None}

    with MemoryService.open(**settings, database_pool_max_size=4) as svc:
        with pytest.raises(migrations.MigrationError) as caught:
            svc.setup()
    message = str(caught.value)
    assert "get search_path '\"$user\", public'" in message
    assert f'ALTER ROLE "postgres" IN DATABASE "{dbname}" SET search_path = memory, public' in message
    assert tables(pg15_empty_db) == set()  # refused before creating anything in public

    with psycopg.connect(pg15_empty_db, autocommit=True) as conn:
        conn.execute(f'ALTER ROLE postgres IN DATABASE "{dbname}" SET search_path = memory, public')
    # role settings apply to new server sessions: a fresh PgBouncer has none pooled yet
    settings["database_url"] = f"{pgbouncer(ignore_options=True)}/{dbname}"
    with MemoryService.open(**settings, database_pool_max_size=4) as svc:
        first = svc.setup()
        second = svc.setup()  # the migration lock did not leak into a pooled server connection
        tools = run_agent(
            svc,
            "acme",
            tool_call("write_file", file_path="/memories/prefs.md", content="likes tea\n"),
            tool_call("read_file", file_path="/memories/prefs.md"),
        )
    assert first.at_head and first.changed and second.at_head and not second.changed
    assert [t.status for t in tools] == ["success", "success"] and "likes tea" in tools[1].content
    assert LANGGRAPH_TABLES | OUR_TABLES <= tables(pg15_empty_db, "memory")
    assert tables(pg15_empty_db, "public") == set()


def test_the_migration_lock_holder_keeps_no_snapshot(empty_db):
    """An idle holder with a backend_xmin would make CREATE INDEX CONCURRENTLY wait for it forever."""
    with migrations.migration_lock(empty_db), psycopg.connect(empty_db) as conn:
        holders = conn.execute(
            "SELECT backend_xmin FROM pg_stat_activity "
            "WHERE datname = current_database() AND state = 'idle in transaction'"
        ).fetchall()
    assert holders == [(None,)]
