"""Threads belong to tenants: the tenant-aware saver, tenant tools, forged bundles, legal hold, upgrade.

Real deep agents (scripted model) on real PostgreSQL; "unchanged" is an md5 over the rows themselves.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row
from typer.testing import CliRunner

from helpers import deep_agent, run_agent
from conftest import TEMPLATE
from jobs.checkpoint_pruning import PrunePolicy, prune_checkpoints
from memory import MemoryService, migrations, tenants
from memory.cli import app
from memory.db import connection
from memory.errors import InvalidTenantId, LegalHoldError, TenantNotResolved, ThreadAccessDenied
from memory.scripted import script, tool_call
from memory.tenancy import TenantResolver, bind_tenant, tenant_namespace
from memory.tenants import BundleError

CHECKPOINT_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
ALL_TABLES = ("store", "store_vectors", *CHECKPOINT_TABLES)


@pytest.fixture
def url(embedded_server):
    """A migrated database on the embedded server (these tests do not depend on the server version)."""
    name = f"memory_test_{uuid.uuid4().hex[:12]}"
    yield embedded_server.create_database(name, template=TEMPLATE)
    embedded_server.drop_database(name)


@pytest.fixture
def svc(url):
    with MemoryService.open(database_url=url, database_pool_max_size=8) as service:
        yield service


def thread_md5(url: str, thread_id: str) -> dict[str, tuple[int, str]]:
    """Row count and md5 of one thread's rows in each checkpoint table, and its owner row."""
    out = {}
    with psycopg.connect(url) as conn:
        for table in (*CHECKPOINT_TABLES, "memory_threads"):
            out[table] = conn.execute(
                f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') "
                f"FROM {table} t WHERE thread_id = %s",
                (thread_id,),
            ).fetchone()
    return out


def tenant_md5(url: str, tenant: str) -> dict[str, tuple[int, str]]:
    """Everything a tenant owns: its store and vector rows, its owned threads' rows."""
    out = {}
    like = tenants.tenant_params(tenant)["like"]
    with psycopg.connect(url) as conn:
        vectors = conn.execute("SELECT to_regclass('store_vectors') IS NOT NULL").fetchone()[0]
        for table in ("store", "store_vectors") if vectors else ("store",):
            out[table] = conn.execute(
                f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') "
                f"FROM {table} t WHERE prefix LIKE %s ESCAPE '\\'",
                (like,),
            ).fetchone()
        for table in (*CHECKPOINT_TABLES, "memory_threads"):
            out[table] = conn.execute(
                f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t "
                "WHERE thread_id IN (SELECT thread_id FROM memory_threads WHERE tenant = %s)",
                (tenant,),
            ).fetchone()
    return out


def counts(url: str, where: str, params: tuple) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t} WHERE {where}", params).fetchone()[0] for t in CHECKPOINT_TABLES}


def write(svc, tenant: str, thread_id: str, name: str = "notes.md", content: str = "secret"):
    return run_agent(
        svc, tenant,
        tool_call("write_file", file_path=f"/{name}", content=f"{tenant} {content}\n"),
        tool_call("write_file", file_path=f"/memories/{name}", content=f"{tenant} {content}\n"),
        thread_id=thread_id,
    )


# -- the saver ----------------------------------------------------------------------------------


def test_two_tenants_with_one_thread_id_never_see_or_change_each_other(svc, url):
    write(svc, "alice", "t1")
    before = thread_md5(url, "t1")

    with pytest.raises(ThreadAccessDenied, match=r"thread 't1' belongs to another tenant") as refused:
        run_agent(svc, "bob", tool_call("read_file", file_path="/notes.md"), thread_id="t1")
    assert "alice" not in str(refused.value)
    agent = deep_agent(svc)
    with pytest.raises(ThreadAccessDenied):
        agent.get_state({"configurable": {"thread_id": "t1"}, "metadata": {"assistant_id": "bob"}})
    with pytest.raises(ThreadAccessDenied):
        list(agent.get_state_history({"configurable": {"thread_id": "t1"}, "metadata": {"assistant_id": "bob"}}))
    with pytest.raises(ThreadAccessDenied):
        agent.update_state({"configurable": {"thread_id": "t1"}, "metadata": {"assistant_id": "bob"}}, {"messages": []})
    with bind_tenant("bob"), pytest.raises(ThreadAccessDenied):
        svc.checkpointer.delete_thread("t1")
    assert thread_md5(url, "t1") == before

    state = agent.get_state({"configurable": {"thread_id": "t1"}, "metadata": {"assistant_id": "alice"}})
    assert "/notes.md" in state.values["files"] and len(state.values["messages"]) > 2


def test_no_tenant_reads_and_writes_nothing(svc, url):
    write(svc, "alice", "t1")
    agent = deep_agent(svc, tool_call("write_file", file_path="/x.md", content="x"))
    with pytest.raises(TenantNotResolved):
        agent.invoke({"messages": [{"role": "user", "content": "go"}]}, config={"configurable": {"thread_id": "t2"}})
    with pytest.raises(TenantNotResolved):
        agent.get_state({"configurable": {"thread_id": "t1"}})
    assert counts(url, "thread_id = %s", ("t2",)) == dict.fromkeys(CHECKPOINT_TABLES, 0)


def test_list_without_a_thread_returns_only_the_tenants_threads(svc):
    write(svc, "alice", "a1")
    write(svc, "alice", "a2")
    write(svc, "bob", "b1")
    with bind_tenant("alice"):
        threads = {c.config["configurable"]["thread_id"] for c in svc.checkpointer.list(None)}
    assert threads == {"a1", "a2"}
    with bind_tenant("carol"):
        assert list(svc.checkpointer.list(None)) == []


def test_the_async_saver_keeps_threads_apart(url):
    async def scenario():
        async with MemoryService.aopen(database_url=url, database_pool_max_size=4) as svc:
            async def run(tenant, *calls):
                agent = deep_agent(svc, *calls)
                config = {"configurable": {"thread_id": "shared"}, "metadata": {"assistant_id": tenant}}
                return await agent.ainvoke({"messages": [{"role": "user", "content": "go"}]}, config=config)

            await run("alice", tool_call("write_file", file_path="/a.md", content="alice only"))
            before = thread_md5(url, "shared")
            with pytest.raises(ThreadAccessDenied):
                await run("bob", tool_call("read_file", file_path="/a.md"))
            assert thread_md5(url, "shared") == before
            agent = deep_agent(svc)
            state = await agent.aget_state({"configurable": {"thread_id": "shared"}, "metadata": {"assistant_id": "alice"}})
            assert "/a.md" in state.values["files"]
            with pytest.raises(ThreadAccessDenied):
                await agent.aget_state({"configurable": {"thread_id": "shared"}, "metadata": {"assistant_id": "bob"}})
            with bind_tenant("alice"):
                assert [c.config["configurable"]["thread_id"] async for c in svc.checkpointer.alist(None)][:1] == ["shared"]
            with bind_tenant("bob"):
                assert [c async for c in svc.checkpointer.alist(None)] == []

    asyncio.run(scenario())


def test_a_first_write_race_between_two_tenants_has_one_winner(svc, url):
    """Both claim the same new thread at once: exactly one owns it, the other is refused, nothing mixed."""
    import threading

    outcomes: dict[str, str] = {}
    start = threading.Barrier(2)

    def go(tenant):
        start.wait()
        try:
            write(svc, tenant, "contested")
            outcomes[tenant] = "ok"
        except ThreadAccessDenied:
            outcomes[tenant] = "refused"

    workers = [threading.Thread(target=go, args=(t,)) for t in ("alice", "bob")]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(outcomes.values()) == ["ok", "refused"]
    winner = next(t for t, o in outcomes.items() if o == "ok")
    with psycopg.connect(url) as conn:
        named = {r[0] for r in conn.execute("SELECT DISTINCT metadata->>'assistant_id' FROM checkpoints WHERE thread_id = 'contested'")}
    assert named == {winner}


# -- the runtime context ------------------------------------------------------------------------


@dataclass
class Ctx:
    assistant_id: str


def test_a_context_resolved_tenant_owns_its_threads_and_is_erased_completely(url):
    with MemoryService.open(database_url=url, database_pool_max_size=4, index_dims=8, index_embed="fake") as svc:
        svc.setup()
        _context_resolved_erasure(svc, url)


def _context_resolved_erasure(svc, url):
    agent = deep_agent(
        svc,
        tool_call("write_file", file_path="/memories/c.md", content="carol's note"),
        tool_call("write_file", file_path="/state.md", content="carol's state"),
    )
    agent.invoke({"messages": [{"role": "user", "content": "go"}]}, config={"configurable": {"thread_id": "c1"}},
                 context=Ctx("carol"))
    write(svc, "dave", "d1")
    dave = tenant_md5(url, "dave")
    with connection(svc.pool) as conn:
        stats = tenants.tenant_stats(conn, "carol")
        assert (stats.items, stats.threads) == (1, 1) and stats.checkpoints > 0
        receipt = tenants.delete_tenant(conn, "carol")
    assert receipt["counts"]["threads"] == 1 and receipt["counts"]["checkpoint_blobs"] > 0
    assert receipt["counts"]["vectors"] == 1
    with psycopg.connect(url) as conn:
        left = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE thread_id = 'c1'").fetchone()[0] for t in CHECKPOINT_TABLES}
        left["store"] = conn.execute("SELECT count(*) FROM store WHERE prefix LIKE 'carol.%'").fetchone()[0]
        left["store_vectors"] = conn.execute("SELECT count(*) FROM store_vectors WHERE prefix LIKE 'carol.%'").fetchone()[0]
        left["memory_threads"] = conn.execute("SELECT count(*) FROM memory_threads WHERE thread_id = 'c1'").fetchone()[0]
    assert left == dict.fromkeys(left, 0)
    assert tenant_md5(url, "dave") == dave


# -- tenant tools go through ownership ----------------------------------------------------------


def test_export_delete_and_stats_of_one_tenant_never_touch_anothers_thread(svc, url, tmp_path):
    write(svc, "alice", "t1")
    write(svc, "bob", "t2")
    bob = tenant_md5(url, "bob")
    with connection(svc.pool) as conn:
        manifest = tenants.export_tenant(conn, "alice", tmp_path / "alice.bundle")
        bundle = tenants.read_bundle(tmp_path / "alice.bundle")
        assert {r["thread_id"] for r in bundle.sections["checkpoints"]} == {"t1"} and manifest["threads"] == 1
        assert tenants.tenant_stats(conn, "bob").threads == 1
        tenants.delete_tenant(conn, "alice")
    assert tenant_md5(url, "bob") == bob


def _rewrite_bundle(src: Path, dst: Path, change) -> None:
    """Re-pack a bundle after `change(files)` edits its members, with matching section digests."""
    import hashlib

    with tarfile.open(src, "r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    change(files)
    manifest = json.loads(files["manifest.json"])
    for name in tenants.SECTIONS:
        data = files[f"{name}.jsonl"]
        manifest["sections"][name] = {"rows": len(data.splitlines()), "sha256": hashlib.sha256(data).hexdigest()}
    if "keep_binding" not in files:
        manifest["binding"] = tenants.bundle_binding(manifest["tenant"], manifest["sections"])
    files["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(dst, "w:gz") as tar:
        for name in ["manifest.json"] + [f"{s}.jsonl" for s in tenants.SECTIONS]:
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))


def _retarget_threads(files, old: str, new: str) -> None:
    for name in tenants.SECTIONS[2:]:
        rows = [json.loads(line) for line in files[f"{name}.jsonl"].decode().splitlines()]
        for row in rows:
            row["thread_id"] = new if row["thread_id"] == old else row["thread_id"]
        files[f"{name}.jsonl"] = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in rows)


def test_forged_bundles_are_refused_and_the_victim_is_byte_identical(svc, url, tmp_path):
    write(svc, "victim", "v1")
    write(svc, "mallory", "m1")
    with connection(svc.pool) as conn:
        tenants.export_tenant(conn, "mallory", tmp_path / "mallory.bundle")
    victim = tenant_md5(url, "victim")
    mallory = tenant_md5(url, "mallory")

    # 1. mallory's bundle with her thread renamed to the victim's thread id
    _rewrite_bundle(tmp_path / "mallory.bundle", tmp_path / "steal.bundle", lambda f: _retarget_threads(f, "m1", "v1"))
    # 2. checkpoint metadata naming the victim
    def name_victim(files):
        rows = [json.loads(line) for line in files["checkpoints.jsonl"].decode().splitlines()]
        for row in rows:
            meta = json.loads(row["metadata"])
            meta["assistant_id"] = "victim"
            row["metadata"] = json.dumps(meta)
            row["thread_id"] = "planted"
        files["checkpoints.jsonl"] = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in rows)
    _rewrite_bundle(tmp_path / "mallory.bundle", tmp_path / "metadata.bundle", name_victim)
    # 3. the manifest edited to name the victim (sections untouched)
    def rename(files):
        manifest = json.loads(files["manifest.json"])
        manifest["tenant"] = "victim"
        files["manifest.json"] = json.dumps(manifest).encode()
        files["keep_binding"] = b""
    _rewrite_bundle(tmp_path / "mallory.bundle", tmp_path / "renamed.bundle", rename)

    for forged, reason in (
        ("steal.bundle", r"thread 'v1' of the bundle belongs to another tenant here"),
        ("metadata.bundle", r"names another tenant than the bundle's"),
        ("renamed.bundle", r"does not match the bundle's binding: the manifest was edited"),
    ):
        with connection(svc.pool) as conn, pytest.raises(BundleError, match=reason):
            tenants.import_tenant(conn, tmp_path / forged)
        result = CliRunner().invoke(app, ["tenant", "import", str(tmp_path / forged)], env={"MEMORY_DATABASE_URL": url})
        assert result.exit_code == 1 and result.output.startswith("error: ") and len(result.output.splitlines()) == 1
    assert tenant_md5(url, "victim") == victim
    assert tenant_md5(url, "mallory") == mallory
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM memory_threads WHERE thread_id = 'planted'").fetchone()[0] == 0

    # --as remaps thread ids, so a clone of the forged bundle lands in the new tenant only
    with connection(svc.pool) as conn:
        report = tenants.import_tenant(conn, tmp_path / "steal.bundle", as_tenant="mallory2")
    assert report.checkpoints_inserted > 0 and tenant_md5(url, "victim") == victim


def test_an_unmodified_bundle_does_not_append_to_a_thread_another_tenant_now_owns(svc, url, tmp_path):
    """The issue's case: alice exported, her thread went; bob took `t1`; alice's bundle must not land in it."""
    write(svc, "alice", "t1")
    with connection(svc.pool) as conn:
        tenants.export_tenant(conn, "alice", tmp_path / "alice.bundle")
    with bind_tenant("alice"):
        svc.checkpointer.delete_thread("t1")
    write(svc, "bob", "t1")
    bob = thread_md5(url, "t1")
    with connection(svc.pool) as conn, pytest.raises(BundleError, match="belongs to another tenant here"):
        tenants.import_tenant(conn, tmp_path / "alice.bundle")
    assert thread_md5(url, "t1") == bob


# -- legal hold ---------------------------------------------------------------------------------


def test_legal_hold_refuses_every_deletion_path(url, tmp_path):
    env = {"MEMORY_DATABASE_URL": url, "MEMORY_RETENTION_LEGAL_HOLD": '["held"]'}
    with MemoryService.open(database_url=url, retention_legal_hold=["held"]) as svc:
        write(svc, "held", "h1")
        with connection(svc.pool) as conn:
            tenants.export_tenant(conn, "held", tmp_path / "held.bundle")
        before = tenant_md5(url, "held")
        with bind_tenant("held"), pytest.raises(LegalHoldError):
            svc.checkpointer.delete_thread("h1")
        with bind_tenant("held"), pytest.raises(LegalHoldError):
            svc.checkpointer.prune(["h1"], strategy="delete")
    runner = CliRunner()
    for args in (
        ["tenant", "delete", "held", "--yes"],
        ["tenant", "import", str(tmp_path / "held.bundle"), "--mode", "replace"],
        ["jobs", "run", "prune-checkpoints", "--tenant", "held"],
        ["jobs", "run", "ttl-cleanup", "--tenant", "held"],
    ):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code != 0, (args, result.output)
        assert result.output.startswith("error: tenant 'held' is under legal hold"), (args, result.output)
        assert "lift the hold" in result.output and len(result.output.strip().splitlines()) == 1
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        report = prune_checkpoints(conn, PrunePolicy(idle_days=0.000001, keep_latest=1, legal_hold=frozenset({"held"})))
    assert report.counts["held_threads"] == 1
    assert tenant_md5(url, "held") == before


# -- scope values -------------------------------------------------------------------------------


def test_a_scope_value_equal_to_the_suffix_is_refused():
    assert tenant_namespace("acme", ["u1"]) == ("acme", "u1", "memories")
    with pytest.raises(InvalidTenantId, match="equals the namespace suffix"):
        tenant_namespace("acme", ["memories"])
    resolver = TenantResolver(("assistant_id", "user_id"))
    assert resolver.namespace_for({"metadata": {"assistant_id": "acme", "user_id": "u1"}}) == ("acme", "u1", "memories")
    with pytest.raises(InvalidTenantId, match="'memories' equals the namespace suffix"):
        resolver.namespace_for({"metadata": {"assistant_id": "acme", "user_id": "memories"}})


# -- upgrade of a database from before ownership ------------------------------------------------


def test_upgrade_attributes_threads_and_reports_the_rest_nothing_deleted(svc, url):
    write(svc, "alice", "clean")
    write(svc, "bob", "shared")
    with psycopg.connect(url, autocommit=True) as conn:
        # the pre-ownership world: bob and carol wrote to one thread; a thread with no tenant at all
        conn.execute("UPDATE checkpoints SET metadata = metadata || '{\"assistant_id\": \"carol\"}' "
                     "WHERE thread_id = 'shared' AND checkpoint_id = (SELECT min(checkpoint_id) FROM checkpoints WHERE thread_id = 'shared')")
        write(svc, "dave", "anonymous")
        conn.execute("UPDATE checkpoints SET metadata = metadata - 'assistant_id' WHERE thread_id = 'anonymous'")
        totals = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in CHECKPOINT_TABLES}
    migrations.downgrade(url, "34fbde1743aa")
    state = migrations.upgrade(url)
    assert state.unattributed_threads == ("anonymous", "shared")
    with psycopg.connect(url) as conn:
        assert totals == {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in CHECKPOINT_TABLES}
        owners = dict(conn.execute("SELECT thread_id, tenant FROM memory_threads").fetchall())
    assert owners == {"clean": "alice", "shared": None, "anonymous": None}

    agent = deep_agent(svc)
    for tenant in ("bob", "carol"):
        with pytest.raises(ThreadAccessDenied, match="has no owner"):
            agent.get_state({"configurable": {"thread_id": "shared"}, "metadata": {"assistant_id": tenant}})
    runner = CliRunner()
    env = {"MEMORY_DATABASE_URL": url}
    listed = runner.invoke(app, ["threads", "unowned", "--json"], env=env)
    assert listed.exit_code == 0 and {r["thread_id"] for r in json.loads(listed.output)} == {"shared", "anonymous"}
    assigned = runner.invoke(app, ["threads", "assign", "shared", "bob"], env=env)
    assert assigned.exit_code == 0, assigned.output
    again = runner.invoke(app, ["threads", "assign", "shared", "carol"], env=env)
    assert again.exit_code == 1 and again.output.startswith("error: thread 'shared' is not unattributed")
    state = agent.get_state({"configurable": {"thread_id": "shared"}, "metadata": {"assistant_id": "bob"}})
    assert "/notes.md" in state.values["files"]


def test_db_upgrade_prints_the_threads_it_could_not_attribute(svc, url):
    write(svc, "dave", "anonymous")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE checkpoints SET metadata = metadata - 'assistant_id' WHERE thread_id = 'anonymous'")
    migrations.downgrade(url, "34fbde1743aa")
    result = CliRunner().invoke(app, ["db", "upgrade"], env={"MEMORY_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert "1 checkpoint threads could not be attributed to one tenant" in result.output and "anonymous" in result.output


# -- interrupts, resume and subgraphs through the tenant-aware saver ----------------------------


def _interrupting_graph(checkpointer):
    """A parent graph whose subgraph asks for approval (`interrupt`) before writing its answer."""
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    class State(TypedDict, total=False):
        asked: str
        answer: str

    def ask(state: State) -> State:
        return {"answer": f"{state['asked']} -> {interrupt('approve?')}"}

    sub = StateGraph(State)
    sub.add_node("ask", ask)
    sub.add_edge(START, "ask")
    sub.add_edge("ask", END)
    parent = StateGraph(State)
    parent.add_node("sub", sub.compile())
    parent.add_edge(START, "sub")
    parent.add_edge("sub", END)
    return parent.compile(checkpointer=checkpointer)


def test_interrupt_and_resume_in_a_subgraph_stay_with_the_owner(svc, url):
    from langgraph.types import Command

    graph = _interrupting_graph(svc.checkpointer)
    alice = {"configurable": {"thread_id": "hitl"}, "metadata": {"assistant_id": "alice"}}
    first = graph.invoke({"asked": "deploy"}, alice)
    assert first["__interrupt__"][0].value == "approve?"
    with pytest.raises(TenantNotResolved):  # LangGraph asks for subgraph states with a config of the thread only
        graph.get_state(alice, subgraphs=True)
    with bind_tenant("alice"):
        paused = graph.get_state(alice, subgraphs=True)
    assert paused.next == ("sub",) and paused.tasks[0].state.next == ("ask",)
    before = thread_md5(url, "hitl")

    bob = {"configurable": {"thread_id": "hitl"}, "metadata": {"assistant_id": "bob"}}
    with pytest.raises(ThreadAccessDenied):
        graph.invoke(Command(resume="yes"), bob)
    assert thread_md5(url, "hitl") == before

    done = graph.invoke(Command(resume="yes"), alice)
    assert done["answer"] == "deploy -> yes"
    with psycopg.connect(url) as conn:
        namespaces = {r[0] for r in conn.execute("SELECT DISTINCT checkpoint_ns FROM checkpoints WHERE thread_id = 'hitl'")}
    assert "" in namespaces  # the parent's; LangGraph keeps the subgraph's writes under the same thread


def test_interrupt_and_resume_through_the_async_saver(url):
    from langgraph.types import Command

    async def scenario():
        async with MemoryService.aopen(database_url=url, database_pool_max_size=4) as asvc:
            graph = _interrupting_graph(asvc.checkpointer)
            alice = {"configurable": {"thread_id": "ahitl"}, "metadata": {"assistant_id": "alice"}}
            first = await graph.ainvoke({"asked": "ship"}, alice)
            assert first["__interrupt__"][0].value == "approve?"
            with pytest.raises(ThreadAccessDenied):
                await graph.ainvoke(Command(resume="yes"), {**alice, "metadata": {"assistant_id": "bob"}})
            done = await graph.ainvoke(Command(resume="ok"), alice)
            assert done["answer"] == "ship -> ok"

    asyncio.run(scenario())


def test_rows_written_around_the_saver_belong_to_nobody_until_assigned(svc, url):
    """A plain PostgresSaver on the same database writes a thread with no owner row: every tenant is
    refused it (read and write), `memory threads unowned` lists it, `assign` hands it over."""
    from langgraph.checkpoint.postgres import PostgresSaver

    from deepagents import create_deep_agent

    around = create_deep_agent(model=script(tool_call("write_file", file_path="/p.md", content="plain"), "done"),
                               checkpointer=PostgresSaver(svc.pool))
    around.invoke({"messages": [{"role": "user", "content": "go"}]}, config={"configurable": {"thread_id": "around"}})
    before = counts(url, "thread_id = %s", ("around",))
    assert before["checkpoints"] > 0
    agent = deep_agent(svc)
    for tenant in ("alice", "bob"):
        with pytest.raises(ThreadAccessDenied, match="has no owner"):
            agent.get_state({"configurable": {"thread_id": "around"}, "metadata": {"assistant_id": tenant}})
        with pytest.raises(ThreadAccessDenied, match="has no owner"):
            run_agent(svc, tenant, tool_call("read_file", file_path="/p.md"), thread_id="around")
    assert counts(url, "thread_id = %s", ("around",)) == before
    env = {"MEMORY_DATABASE_URL": url}
    listed = CliRunner().invoke(app, ["threads", "unowned", "--json"], env=env)
    assert [r["thread_id"] for r in json.loads(listed.output)] == ["around"]
    assert CliRunner().invoke(app, ["threads", "assign", "around", "alice"], env=env).exit_code == 0
    state = agent.get_state({"configurable": {"thread_id": "around"}, "metadata": {"assistant_id": "alice"}})
    assert "/p.md" in state.values["files"]
