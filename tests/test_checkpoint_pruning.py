"""Checkpoint pruning on real deep-agent threads: idle threads go whole, long ones are trimmed
yet load exactly as before and go on, orphans go, held tenants and busy threads are left alone."""

from __future__ import annotations

import json
import operator
import threading
from datetime import timedelta
from collections.abc import Iterator
from typing import Annotated

import langgraph.pregel._checkpoint as pregel_checkpoint
import psycopg
import pytest
from langgraph.graph import START, StateGraph
from typing_extensions import TypedDict

from jobs import runs
from jobs.checkpoint_pruning import IDLE_MARK, JOB, CheckpointRow, PrunePolicy, prune_checkpoints, trim_plan
from memory import MemoryService
from memory.scripted import tool_call
from helpers import deep_agent
from test_retention import _memory

TABLES = ("checkpoints", "checkpoint_writes", "checkpoint_blobs")
KEEP_ONLY_RECENT = PrunePolicy(idle_days=0, keep_latest=3)
"""No idle deletion: only history trimming (and orphans)."""


# -- helpers ------------------------------------------------------------------------------------


def config(thread_id: str, tenant: str) -> dict:
    return {"configurable": {"thread_id": thread_id}, "metadata": {"assistant_id": tenant}}


def turns(svc: MemoryService, thread_id: str, tenant: str, count: int, first: int = 0):
    """`count` turns, each writing /notes{n}.md to the thread's state files and a memory file."""
    agent = None
    for n in range(first, first + count):
        agent = deep_agent(
            svc,
            tool_call("write_file", file_path=f"/notes{n}.md", content=f"turn {n}\n"),
            tool_call("write_file", file_path=f"/memories/turn{n}.md", content=f"remembered {n}\n"),
        )
        agent.invoke({"messages": [{"role": "user", "content": f"turn {n}"}]}, config=config(thread_id, tenant))
    return agent


def loaded(agent, thread_id: str, tenant: str) -> tuple:
    """What `get_state` returns, all of it but the object identity."""
    state = agent.get_state(config(thread_id, tenant))
    return state.values, state.next, state.config, state.metadata, state.created_at, state.tasks


def latest_states(agent, thread_id: str, tenant: str, count: int) -> list[tuple]:
    """The values of the latest `count` checkpoints, as `get_state` of each returns them."""
    history = list(agent.get_state_history(config(thread_id, tenant), limit=count))
    return [(s.config["configurable"]["checkpoint_id"], s.values, s.next) for s in history]


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def table_rows(url: str, thread_id: str | None = None) -> dict[str, int]:
    with connect(url) as conn:
        return {
            table: conn.execute(
                f"SELECT count(*) FROM {table} WHERE %(thread)s::text IS NULL OR thread_id = %(thread)s",
                {"thread": thread_id},
            ).fetchone()[0]
            for table in TABLES
        }


def fingerprint(url: str) -> dict[str, str]:
    """An md5 of every row of the three tables: equal fingerprints, equal tables."""
    with connect(url) as conn:
        return {
            table: conn.execute(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t").fetchone()[0]
            for table in TABLES
        }


ORPHAN_WRITES = """
SELECT count(*) FROM checkpoint_writes w WHERE NOT EXISTS (SELECT 1 FROM checkpoints c
 WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns AND c.checkpoint_id = w.checkpoint_id)
"""
UNREFERENCED_BLOBS = """
SELECT count(*) FROM checkpoint_blobs b WHERE NOT EXISTS (SELECT 1 FROM checkpoints c
 WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
   AND c.checkpoint->'channel_versions'->>b.channel = b.version)
"""


def orphans(url: str) -> tuple[int, int]:
    with connect(url) as conn:
        return conn.execute(ORPHAN_WRITES).fetchone()[0], conn.execute(UNREFERENCED_BLOBS).fetchone()[0]


AGE_THREAD = """
UPDATE checkpoints
   SET checkpoint = jsonb_set(checkpoint, '{ts}', to_jsonb(to_char(
       ((checkpoint->>'ts')::timestamptz - make_interval(days => %(days)s)) AT TIME ZONE 'UTC',
       'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')))
 WHERE thread_id = %(thread)s
"""


def age_thread(url: str, thread_id: str, days: int) -> None:
    """Move every checkpoint of the thread `days` into the past, written as LangGraph writes `ts`."""
    with connect(url) as conn:
        conn.execute(AGE_THREAD, {"thread": thread_id, "days": days})


def prune(url: str, policy: PrunePolicy, **kwargs):
    with connect(url) as conn:
        return prune_checkpoints(conn, policy, **kwargs)


@pytest.fixture
def svc(database_url: str) -> Iterator[MemoryService]:
    with MemoryService.open(database_url=database_url, database_pool_max_size=8) as service:
        yield service


# -- the trim plan on its own -------------------------------------------------------------------


def row(cid: str, parent: str | None, versions: dict, inline=(), counters=(), v: int = 4) -> CheckpointRow:
    return CheckpointRow("", cid, parent, v, versions, frozenset(inline), frozenset(), frozenset(counters))


def test_plan_keeps_the_walk_down_to_each_delta_channels_snapshot():
    # c1 holds a snapshot of `messages` (a blob at its version); c2..c5 hold none.
    rows = [
        row("c0", None, {"messages": "1", "todo": "1"}, counters=["messages"]),
        row("c1", "c0", {"messages": "2", "todo": "1"}, inline=["messages"]),
        row("c2", "c1", {"messages": "3", "todo": "1"}, counters=["messages"]),
        row("c3", "c2", {"messages": "4", "todo": "2"}, counters=["messages"]),
        row("c4", "c3", {"messages": "5", "todo": "2"}, counters=["messages"]),
    ]
    blobs = {("", "messages", "2"), ("", "todo", "1"), ("", "todo", "2")}
    [plan] = trim_plan(rows, blobs, keep=2)
    assert plan.delete == ["c0"]  # c1 (the snapshot) and c2 are what c3 and c4 are rebuilt from
    assert plan.kept_for_replay == 2
    assert plan.garbage_blobs == [("messages", "1")]  # `todo` 1 is still used by c1 and c2

    no_snapshot = [r if r.id != "c1" else row("c1", "c0", {"messages": "2", "todo": "1"}, counters=["messages"]) for r in rows]
    assert trim_plan(no_snapshot, {("", "todo", "1"), ("", "todo", "2")}, keep=2) == []  # nothing holds `messages`: every ancestor is needed


def test_plan_of_a_plain_thread_keeps_only_the_latest():
    rows = [row(f"c{n}", f"c{n - 1}" if n else None, {"count": str(n)}) for n in range(6)]
    blobs = {("", "count", str(n)) for n in range(6)}
    [plan] = trim_plan(rows, blobs, keep=2)
    assert plan.delete == ["c0", "c1", "c2", "c3"]
    assert plan.kept_for_replay == 0
    assert plan.garbage_blobs == [("count", str(n)) for n in range(4)]


def test_plan_follows_parents_across_a_fork():
    # c3 forks from c1 (an update_state on an old checkpoint): its walk goes c1 -> c0, not c2.
    rows = [
        row("c0", None, {"m": "1"}, inline=["m"], counters=["m"]),
        row("c1", "c0", {"m": "2"}, counters=["m"]),
        row("c2", "c1", {"m": "3"}, counters=["m"]),
        row("c3", "c1", {"m": "4"}, counters=["m"]),
    ]
    [plan] = trim_plan(rows, set(), keep=1)
    assert plan.delete == ["c2"]
    assert plan.kept_for_replay == 2


# -- idle threads -------------------------------------------------------------------------------


def test_idle_threads_go_from_all_three_tables_and_live_ones_stay(svc, database_url):
    agent = turns(svc, "idle-acme", "acme", 1)
    turns(svc, "idle-globex", "globex", 1)
    turns(svc, "live-acme", "acme", 1)
    age_thread(database_url, "idle-acme", 40)
    age_thread(database_url, "idle-globex", 31)
    live_before = loaded(agent, "live-acme", "acme")
    live_rows = table_rows(database_url, "live-acme")
    idle_rows = table_rows(database_url, "idle-acme")
    assert all(idle_rows.values())

    report = prune(database_url, PrunePolicy(idle_days=30, keep_latest=100))

    assert report.status == "succeeded"
    for thread in ("idle-acme", "idle-globex"):
        assert table_rows(database_url, thread) == dict.fromkeys(TABLES, 0)
    with connect(database_url) as conn:  # the owner rows go with the threads: the ids are free again
        owners = {r[0] for r in conn.execute("SELECT thread_id FROM memory_threads")}
    assert owners == {"live-acme"}
    assert table_rows(database_url, "live-acme") == live_rows
    assert loaded(agent, "live-acme", "acme") == live_before
    assert report.counts["idle_threads"] == 2
    assert report.tenant_counts["acme"] == {
        "idle_threads": 1,
        "checkpoints": idle_rows["checkpoints"],
        "writes": idle_rows["checkpoint_writes"],
        "blobs": idle_rows["checkpoint_blobs"],
    }
    assert set(report.tenant_counts) == {"acme", "globex"}
    with connect(database_url) as conn:
        [recorded] = runs.history(conn, job=JOB)
    assert (recorded.run_id, recorded.counts["idle_threads"]) == (report.run_id, 2)


def test_a_run_leaves_the_connections_settings_as_it_found_them(svc, database_url):
    """Batches commit without waiting for the disk and the full find takes more memory, each for
    its own transactions only: the caller's connection goes on with its own settings."""
    turns(svc, "idle-acme", "acme", 1)
    age_thread(database_url, "idle-acme", 40)
    shown = "SELECT current_setting('synchronous_commit'), current_setting('lock_timeout'), current_setting('work_mem')"
    with connect(database_url) as conn:
        before = conn.execute(shown).fetchone()
        report = prune_checkpoints(conn, PrunePolicy(idle_days=30, keep_latest=100), full=True)
        after = conn.execute(shown).fetchone()
    assert (report.counts["full_pass"], report.counts["idle_threads"]) == (1, 1)
    assert after == before


def test_a_thread_newer_than_the_cutoff_in_any_row_is_not_idle(svc, database_url):
    turns(svc, "half-old", "acme", 2)
    with connect(database_url) as conn:  # only its older half is old
        first = conn.execute("SELECT min(checkpoint_id) FROM checkpoints WHERE thread_id = 'half-old'").fetchone()[0]
        conn.execute(AGE_THREAD.replace("WHERE thread_id = %(thread)s", "WHERE thread_id = %(thread)s AND checkpoint_id = %(first)s"),
                     {"thread": "half-old", "days": 90, "first": first})
    report = prune(database_url, PrunePolicy(idle_days=30, keep_latest=1000))
    assert report.counts["idle_threads"] == 0 and report.counts["full_pass"] == 1
    assert report.counts["batches_redone"] == 0, "the full pass's find selected it (the delete's check caught it)"
    assert table_rows(database_url, "half-old")["checkpoints"] > 0


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
def test_a_thread_written_after_it_was_selected_is_kept_and_the_rest_of_its_batch_goes(svc, database_url, dry_run):
    threads = ("idle-a", "idle-b", "idle-c", "idle-d")  # two batches of two, in this order
    for thread in threads:
        turns(svc, thread, "acme", 1)
        age_thread(database_url, thread, 40)
    gone = {thread: table_rows(database_url, thread) for thread in threads[:3]}

    def revive_d(report) -> None:  # after the first batch, before the one holding idle-d
        if report.counts["batches"] == 1:
            turns(svc, "idle-d", "acme", 1, first=1)

    report = prune(database_url, PrunePolicy(idle_days=30, keep_latest=100, thread_batch_size=2), dry_run=dry_run, on_batch=revive_d)

    assert report.status == "succeeded" and report.counts["batches_redone"] == 1
    assert report.tenant_counts["acme"] == {
        "idle_threads": 3,
        "checkpoints": sum(rows["checkpoints"] for rows in gone.values()),
        "writes": sum(rows["checkpoint_writes"] for rows in gone.values()),
        "blobs": sum(rows["checkpoint_blobs"] for rows in gone.values()),
    }
    assert all(table_rows(database_url, "idle-d").values())
    if not dry_run:
        assert {thread: table_rows(database_url, thread)["checkpoints"] for thread in threads[:3]} == dict.fromkeys(threads[:3], 0)
        with connect(database_url) as conn:
            assert [r[0] for r in conn.execute("SELECT thread_id FROM memory_threads")] == ["idle-d"]
        values = deep_agent(svc).get_state(config("idle-d", "acme")).values
        assert [m.content for m in values["messages"] if m.type == "human"] == ["turn 0", "turn 1"]


def test_dry_run_changes_nothing_and_predicts_the_real_run(svc, database_url):
    turns(svc, "old", "acme", 1)
    turns(svc, "long", "globex", 3)
    age_thread(database_url, "old", 60)
    policy = PrunePolicy(idle_days=30, keep_latest=3)
    before = fingerprint(database_url)

    dry = prune(database_url, policy, dry_run=True)
    assert fingerprint(database_url) == before
    real = prune(database_url, policy)

    assert dry.dry_run and not real.dry_run
    assert dry.counts["idle_threads"] == 1 and dry.counts["trimmed_threads"] == 1
    assert dry.tenant_counts == real.tenant_counts
    assert {k: v for k, v in dry.counts.items() if k != "batches"} == {k: v for k, v in real.counts.items() if k != "batches"}


# -- history trimming ---------------------------------------------------------------------------


def test_deep_agent_threads_are_trimmed_yet_load_the_same_and_go_on(svc, database_url):
    assert pregel_checkpoint.DELTA_MAX_SUPERSTEPS_SINCE_SNAPSHOT == 4, "conftest sets the snapshot bound low"
    agent = turns(svc, "long", "acme", 4)
    before = loaded(agent, "long", "acme")
    kept_before = latest_states(agent, "long", "acme", 3)
    rows_before = table_rows(database_url, "long")
    assert orphans(database_url) == (0, 0)

    report = prune(database_url, KEEP_ONLY_RECENT)

    rows_after = table_rows(database_url, "long")
    assert report.counts["trimmed_threads"] == 1
    assert 3 <= rows_after["checkpoints"] < rows_before["checkpoints"] / 3
    assert rows_after["checkpoints"] == 3 + report.counts["kept_for_replay"]
    assert report.counts["checkpoints"] == rows_before["checkpoints"] - rows_after["checkpoints"]
    assert report.counts["writes"] == rows_before["checkpoint_writes"] - rows_after["checkpoint_writes"] > 0
    assert report.counts["blobs"] == rows_before["checkpoint_blobs"] - rows_after["checkpoint_blobs"] > 0
    assert loaded(agent, "long", "acme") == before
    assert latest_states(agent, "long", "acme", 3) == kept_before
    assert orphans(database_url) == (0, 0)
    values = before[0]
    assert sorted(values["files"]) == [f"/notes{n}.md" for n in range(4)]

    # The next turn starts from the whole history: every earlier message and state file.
    agent = deep_agent(svc, tool_call("read_file", file_path="/notes0.md"), tool_call("read_file", file_path="/memories/turn0.md"))
    result = agent.invoke({"messages": [{"role": "user", "content": "turn 4"}]}, config=config("long", "acme"))
    assert [m.content for m in result["messages"] if m.type == "human"] == [f"turn {n}" for n in range(5)]
    assert result["messages"][: len(values["messages"])] == values["messages"]
    read_state, read_memory = [m.content for m in result["messages"] if m.type == "tool"][-2:]
    assert "turn 0" in read_state and "remembered 0" in read_memory
    assert sorted(result["files"]) == [f"/notes{n}.md" for n in range(4)]


def test_a_second_run_trims_the_same_thread_again_without_harm(svc, database_url):
    agent = turns(svc, "twice", "acme", 3)
    prune(database_url, KEEP_ONLY_RECENT)
    turns(svc, "twice", "acme", 2, first=3)
    before = loaded(agent, "twice", "acme")
    report = prune(database_url, KEEP_ONLY_RECENT)
    assert report.counts["trimmed_threads"] == 1
    assert loaded(agent, "twice", "acme") == before
    assert [m.content for m in before[0]["messages"] if m.type == "human"] == [f"turn {n}" for n in range(5)]
    assert orphans(database_url) == (0, 0)


def test_without_a_snapshot_yet_everything_is_needed_and_stays(svc, database_url, monkeypatch):
    monkeypatch.setattr(pregel_checkpoint, "DELTA_MAX_SUPERSTEPS_SINCE_SNAPSHOT", 5000)
    agent = turns(svc, "young", "acme", 2)
    before, rows = loaded(agent, "young", "acme"), table_rows(database_url, "young")
    report = prune(database_url, KEEP_ONLY_RECENT)
    assert report.counts["trimmed_threads"] == 0 and report.counts["checkpoints"] == 0
    assert table_rows(database_url, "young") == rows
    assert loaded(agent, "young", "acme") == before


class Counter(TypedDict):
    total: Annotated[list[int], operator.add]
    last: int


def counter_graph(svc: MemoryService):
    graph = StateGraph(Counter)
    graph.add_node("add", lambda state: {"total": [state["last"]], "last": state["last"] + 1})
    graph.add_edge(START, "add")
    return graph.compile(checkpointer=svc.checkpointer)


def test_plain_threads_keep_exactly_the_latest(svc, database_url):
    graph = counter_graph(svc)
    cfg = config("plain", "acme")
    for n in range(6):
        graph.invoke({"last": n * 10}, cfg)
    before = graph.get_state(cfg)
    kept = [(s.config, s.values) for s in graph.get_state_history(cfg, limit=3)]

    report = prune(database_url, KEEP_ONLY_RECENT)

    assert report.counts["kept_for_replay"] == 0
    assert table_rows(database_url, "plain")["checkpoints"] == 3
    assert [(s.config, s.values) for s in graph.get_state_history(cfg)] == kept
    assert graph.get_state(cfg).values == before.values
    assert orphans(database_url) == (0, 0)
    graph.invoke({"last": 100}, cfg)
    assert graph.get_state(cfg).values["total"] == [*before.values["total"], 100]


# -- who is left alone --------------------------------------------------------------------------


def test_legal_hold_and_tenant_scope(svc, database_url):
    for thread, tenant in (("held-old", "lawsuit"), ("acme-old", "acme"), ("globex-old", "globex")):
        turns(svc, thread, tenant, 1)
        age_thread(database_url, thread, 90)
    turns(svc, "held-long", "lawsuit", 3)
    held_rows = {t: table_rows(database_url, t) for t in ("held-old", "held-long")}
    policy = PrunePolicy(idle_days=30, keep_latest=3, legal_hold=frozenset({"lawsuit"}))

    scoped = prune(database_url, policy, tenant="acme")
    assert set(scoped.tenant_counts) == {"acme"}
    assert table_rows(database_url, "acme-old")["checkpoints"] == 0
    assert table_rows(database_url, "globex-old")["checkpoints"] > 0

    everyone = prune(database_url, policy)
    assert table_rows(database_url, "globex-old")["checkpoints"] == 0
    assert {t: table_rows(database_url, t) for t in held_rows} == held_rows
    assert everyone.counts["held_threads"] == 2
    assert "lawsuit" not in everyone.tenant_counts


def test_a_prune_racing_a_run_on_the_same_thread_leaves_it_loadable(svc, database_url):
    turns(svc, "raced", "acme", 2)
    stop = threading.Event()
    reports, errors = [], []

    def keep_pruning() -> None:
        policy = PrunePolicy(idle_days=0, keep_latest=1)
        try:
            while not stop.is_set():
                try:
                    reports.append(prune(database_url, policy))
                except runs.JobBusy:
                    pass
        except Exception as exc:  # noqa: BLE001 (surfaced by the assertion below)
            errors.append(exc)

    pruner = threading.Thread(target=keep_pruning)
    pruner.start()
    try:
        agent = turns(svc, "raced", "acme", 4, first=2)
    finally:
        stop.set()
        pruner.join(timeout=60)
    assert not errors
    assert sum(r.counts["trimmed_threads"] for r in reports) >= 1
    values = agent.get_state(config("raced", "acme")).values
    assert [m.content for m in values["messages"] if m.type == "human"] == [f"turn {n}" for n in range(6)]
    assert sorted(values["files"]) == [f"/notes{n}.md" for n in range(6)]
    assert orphans(database_url)[0] == 0


# -- orphans ------------------------------------------------------------------------------------


def test_orphans_go_but_rows_of_a_checkpoint_being_saved_stay(svc, database_url):
    agent = turns(svc, "crashed", "acme", 2)
    before = loaded(agent, "crashed", "acme")
    with connect(database_url) as conn:
        oldest = conn.execute("SELECT min(checkpoint_id) FROM checkpoints WHERE thread_id = 'crashed'").fetchone()[0]
        # a delete that stopped half-way: the checkpoint row is gone, its writes and blob are not
        conn.execute("""INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
                        VALUES ('crashed', '', 'files', '00000000000000000000000000000000.1', 'msgpack', '\\x80')""")
        conn.execute("""INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob)
                        VALUES ('crashed', '', '00000000-0000-0000-0000-000000000000', 't', 0, 'messages', 'msgpack', '\\x80')""")
        # a checkpoint being saved right now: its blob and writes land before the checkpoint row
        conn.execute("""INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
                        VALUES ('crashed', '', 'files', '99999999999999999999999999999999.1', 'msgpack', '\\x80')""")
        conn.execute("""INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob)
                        VALUES ('crashed', '', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 't', 0, 'messages', 'msgpack', '\\x80')""")
    assert oldest > "00000000-0000-0000-0000-000000000000"

    dry = prune(database_url, PrunePolicy(idle_days=0, keep_latest=1000), dry_run=True)
    assert (dry.counts["orphan_writes"], dry.counts["orphan_blobs"]) == (1, 1)
    report = prune(database_url, PrunePolicy(idle_days=0, keep_latest=1000))
    assert (report.counts["orphan_writes"], report.counts["orphan_blobs"]) == (1, 1)
    assert report.tenant_counts["acme"]["orphan_writes"] == 1
    assert orphans(database_url) == (1, 1)  # the in-flight checkpoint's rows
    assert loaded(agent, "crashed", "acme") == before


# -- running it ---------------------------------------------------------------------------------


def test_stop_ends_the_run_between_batches(svc, database_url):
    for n in range(3):
        turns(svc, f"old{n}", "acme", 1)
        age_thread(database_url, f"old{n}", 40)
    stop = threading.Event()

    def stop_after_first(report) -> None:
        stop.set()

    report = prune(database_url, PrunePolicy(idle_days=30, keep_latest=3, thread_batch_size=1), stop=stop, on_batch=stop_after_first)
    assert report.status == "failed" and "interrupted" in report.error
    assert report.counts["idle_threads"] == 1
    rest = prune(database_url, PrunePolicy(idle_days=30, keep_latest=3))
    assert rest.counts["idle_threads"] == 2


def test_bad_policy_and_passes_are_refused(database_url):
    with pytest.raises(ValueError, match="keep_latest must be at least 1"):
        PrunePolicy(keep_latest=0)
    with pytest.raises(ValueError, match="idle_days must be >= 0"):
        PrunePolicy(idle_days=-1)
    with pytest.raises(ValueError, match="unknown pass trims; the passes are idle, trim, orphans"):
        prune(database_url, PrunePolicy(), passes=("trims",))


def test_passes_run_only_what_is_asked(svc, database_url):
    turns(svc, "old", "acme", 1)
    age_thread(database_url, "old", 60)
    turns(svc, "long", "acme", 3)
    only_trim = prune(database_url, PrunePolicy(idle_days=30, keep_latest=3), passes=("trim",))
    assert (only_trim.counts["idle_threads"], only_trim.counts["trimmed_threads"]) == (0, 2)
    only_idle = prune(database_url, PrunePolicy(idle_days=30, keep_latest=3), passes=("idle",))
    assert (only_idle.counts["idle_threads"], only_idle.counts["trimmed_threads"]) == (1, 0)


@pytest.mark.servers("pg18")  # CLI wiring; the library tests cover its SQL on both servers
def test_cli_runs_prune_checkpoints(svc, database_url):
    turns(svc, "cli-old", "acme", 1)
    age_thread(database_url, "cli-old", 45)
    turns(svc, "cli-long", "globex", 3)
    env = {"MEMORY_CHECKPOINTS_KEEP_LATEST": "3"}

    dry = _memory("jobs", "run", "prune-checkpoints", "--dry-run", "--json", url=database_url, **env)
    assert dry.returncode == 0, dry.stderr
    counts = json.loads(dry.stdout)["tenant_counts"]
    assert counts["acme"]["idle_threads"] == 1 and counts["globex"]["trimmed_threads"] == 1
    assert table_rows(database_url, "cli-old")["checkpoints"] > 0

    real = _memory("jobs", "run", "prune-checkpoints", "--tenant", "acme", url=database_url, **env)
    assert real.returncode == 0, real.stderr
    assert "deleted 1 idle thread; trimmed 0 threads" in real.stdout
    assert table_rows(database_url, "cli-old")["checkpoints"] == 0

    bad = _memory("jobs", "run", "prune-checkpoints", "--tenant", "a.b", url=database_url)
    assert bad.returncode == 1 and bad.stderr.startswith("error: tenant 'a.b'") and bad.stderr.count("\n") == 1
    history = _memory("jobs", "history", "--job", "prune-checkpoints", "--json", url=database_url)
    assert [r["dry_run"] for r in json.loads(history.stdout)] == [False, True]


# -- incremental runs ---------------------------------------------------------------------------

ORPHAN_WRITE = """
INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob)
VALUES (%(thread)s, '', '00000000-0000-0000-0000-000000000000', 't', 0, 'messages', 'msgpack', '\\x80')
"""
MARK = "SELECT mark, full_pass_at FROM memory_job_watermarks WHERE job = %(job)s"


def mark(url: str):
    with connect(url) as conn:
        return conn.execute(MARK, {"job": JOB}).fetchone()


def test_a_run_looks_only_at_threads_written_since_the_last_one(svc, database_url):
    turns(svc, "old-long", "acme", 3)
    first = prune(database_url, KEEP_ONLY_RECENT)
    assert first.counts["full_pass"] == 1 and first.counts["trimmed_threads"] == 1
    first_mark = mark(database_url)
    assert first_mark is not None and first_mark[1] is not None
    age_thread(database_url, "old-long", 1)  # written a day before the last run, not since
    with connect(database_url) as conn:  # something only a full pass finds: an orphan in a thread nobody writes
        conn.execute(ORPHAN_WRITE, {"thread": "old-long"})
    turns(svc, "new-long", "globex", 3)
    rows_before = table_rows(database_url, "old-long")

    second = prune(database_url, KEEP_ONLY_RECENT)
    assert (second.counts["full_pass"], second.counts["changed_threads"]) == (0, 1)
    assert second.counts["trimmed_threads"] == 1 and set(second.tenant_counts) == {"globex"}
    assert table_rows(database_url, "old-long") == rows_before  # not looked at: its orphan stays
    assert orphans(database_url)[0] == 1
    assert mark(database_url)[0] > first_mark[0] and mark(database_url)[1] == first_mark[1]

    nothing = prune(database_url, KEEP_ONLY_RECENT)
    assert nothing.counts["changed_threads"] == 1  # new-long, written within MARK_MARGIN of the last run
    assert nothing.counts["trimmed_threads"] == 0 and nothing.counts["orphan_writes"] == 0

    full = prune(database_url, KEEP_ONLY_RECENT, full=True)
    assert full.counts["full_pass"] == 1 and full.counts["orphan_writes"] == 1
    assert orphans(database_url)[0] == 0
    assert mark(database_url)[1] > first_mark[1]


def test_a_full_pass_comes_round_every_full_pass_days(svc, database_url):
    turns(svc, "t", "acme", 1)
    policy = PrunePolicy(idle_days=0, keep_latest=3, full_pass_days=7)
    assert prune(database_url, policy).counts["full_pass"] == 1
    assert prune(database_url, policy).counts["full_pass"] == 0
    with connect(database_url) as conn:
        now = conn.execute("SELECT now()").fetchone()[0]
    assert prune(database_url, policy, now=now + timedelta(days=6)).counts["full_pass"] == 0
    assert prune(database_url, policy, now=now + timedelta(days=8)).counts["full_pass"] == 1
    assert prune(database_url, PrunePolicy(idle_days=0, keep_latest=3, full_pass_days=0)).counts["full_pass"] == 1


def test_the_idle_pass_looks_only_at_what_became_idle_since_the_last_run(svc, database_url):
    policy = PrunePolicy(idle_days=30, keep_latest=100)
    turns(svc, "live", "acme", 1)
    assert prune(database_url, policy).counts["full_pass"] == 1  # sets the idle mark: its cutoff
    with connect(database_url) as conn:
        now = conn.execute("SELECT now()").fetchone()[0]
    turns(svc, "imported-old", "acme", 1)  # checkpoints older than the last run's cutoff: a full pass finds them
    age_thread(database_url, "imported-old", 90)
    turns(svc, "went-idle", "globex", 1)  # idle since the last run's cutoff: any run finds it
    age_thread(database_url, "went-idle", 29)
    turns(svc, "revived", "acme", 1)  # old rows in the same window, and a turn now: live, never selected
    age_thread(database_url, "revived", 29)
    turns(svc, "revived", "acme", 1)

    later = prune(database_url, policy, now=now + timedelta(days=2))
    assert (later.counts["full_pass"], later.counts["idle_threads"]) == (0, 1)
    assert later.counts["batches_redone"] == 0, "the find selected a live thread (the delete's check caught it)"
    assert table_rows(database_url, "revived")["checkpoints"] > 0
    assert set(later.tenant_counts) == {"globex"}
    assert table_rows(database_url, "went-idle")["checkpoints"] == 0
    assert table_rows(database_url, "imported-old")["checkpoints"] > 0
    with connect(database_url) as conn:
        assert conn.execute(MARK, {"job": IDLE_MARK}).fetchone()[0] > (now - timedelta(days=29)).isoformat()

    full = prune(database_url, policy, now=now + timedelta(days=2), full=True)
    assert (full.counts["full_pass"], full.counts["idle_threads"]) == (1, 1)
    assert table_rows(database_url, "imported-old")["checkpoints"] == 0
    assert table_rows(database_url, "live")["checkpoints"] > 0


def test_dry_one_tenant_and_partial_runs_leave_the_mark(svc, database_url):
    turns(svc, "t", "acme", 1)
    prune(database_url, KEEP_ONLY_RECENT, dry_run=True)
    prune(database_url, KEEP_ONLY_RECENT, tenant="acme")
    prune(database_url, KEEP_ONLY_RECENT, passes=("idle", "trim"))
    assert mark(database_url) is None
    prune(database_url, KEEP_ONLY_RECENT)
    assert mark(database_url) is not None


@pytest.mark.servers("pg18")  # CLI wiring; the library tests cover its SQL on both servers
def test_cli_full_pass(svc, database_url):
    turns(svc, "cli", "acme", 1)
    first = _memory("jobs", "run", "prune-checkpoints", "--json", url=database_url)
    again = _memory("jobs", "run", "prune-checkpoints", "--json", url=database_url)
    full = _memory("jobs", "run", "prune-checkpoints", "--full", "--json", url=database_url)
    assert [json.loads(r.stdout)["counts"]["full_pass"] for r in (first, again, full)] == [1, 0, 1]
    wrong = _memory("jobs", "run", "ttl-cleanup", "--full", url=database_url)
    assert wrong.returncode == 1 and wrong.stderr == "error: --full applies to prune-checkpoints only, not ttl-cleanup\n"
