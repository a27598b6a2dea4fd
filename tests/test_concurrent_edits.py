"""Concurrent `edit_file` runs on one memory file: ours lose nothing; a plain `StoreBackend` does."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from deepagents import create_deep_agent
from deepagents.backends import CompositeBackend, StateBackend, StoreBackend
from deepagents.backends.protocol import BackendProtocol
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.store.postgres import PostgresStore

from memory import MemoryService, TenantMemoryBackend
from memory.scripted import ScriptedChatModel, tool_call

SERVERS = ("pg18",)
"""Version-independent: the embedded server only (conftest.pytest_generate_tests)."""

RUNS = 16
BOARD = "/memories/board.md"
NAMESPACE = ("acme", "memories")
BARRIER_TIMEOUT_S = 60


class BarrierModel(ScriptedChatModel):
    """Waits for every other run at the barrier before handing back its tool call.

    All runs then execute their `edit_file` at the same moment: the read-modify-write windows overlap.
    """

    barrier: Any = None

    def _generate(self, *args: Any, **kwargs: Any):
        result = super()._generate(*args, **kwargs)
        if result.generations[0].message.tool_calls:
            self.barrier.wait(timeout=BARRIER_TIMEOUT_S)
        return result


class GatedStore(PostgresStore):
    """A `PostgresStore` holding each thread's first `get` until `parties` threads have read.

    Every edit then works from the same old content, so exactly one compare-and-swap can win.
    """

    def __init__(self, conn: Any, parties: int) -> None:
        super().__init__(conn)
        self.gate = threading.Barrier(parties)
        self.passed: set[int] = set()

    def get(self, *args: Any, **kwargs: Any):
        item = super().get(*args, **kwargs)
        if threading.get_ident() not in self.passed:
            self.passed.add(threading.get_ident())
            self.gate.wait(timeout=BARRIER_TIMEOUT_S)
        return item


def slot(i: int, state: str) -> str:
    return f"slot-{i:02d}: {state}"


def seed_board(svc: MemoryService) -> None:
    board = "".join(slot(i, "empty") + "\n" for i in range(RUNS))
    svc.store.put(NAMESPACE, "/board.md", {"content": board, "encoding": "utf-8"})


def board_content(svc: MemoryService) -> str:
    return svc.store.get(NAMESPACE, "/board.md").value["content"]


def concurrent_edits(svc: MemoryService, backend: BackendProtocol, edits: list[tuple[str, str]]) -> list[ToolMessage]:
    """Run one agent per edit, each on its own thread id, all editing at once; their tool results."""
    barrier = threading.Barrier(len(edits))

    def run(edit: tuple[str, str]) -> ToolMessage:
        old, new = edit
        model = BarrierModel(
            messages=iter([tool_call("edit_file", file_path=BOARD, old_string=old, new_string=new), AIMessage(content="done")]),
            barrier=barrier,
        )
        agent = create_deep_agent(model=model, backend=backend, store=svc.store, checkpointer=svc.checkpointer)
        config = {"configurable": {"thread_id": uuid.uuid4().hex}, "metadata": {"assistant_id": "acme"}}
        result = agent.invoke({"messages": [{"role": "user", "content": "mark your slot"}]}, config=config)
        (message,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
        return message

    with ThreadPoolExecutor(max_workers=len(edits)) as pool:
        return list(pool.map(run, edits))


def test_sixteen_concurrent_edits_lose_nothing(service):
    seed_board(service)
    results = concurrent_edits(service, service.backend(), [(slot(i, "empty"), slot(i, "done")) for i in range(RUNS)])

    assert [r.status for r in results] == ["success"] * RUNS, [r.content for r in results if r.status != "success"]
    board = board_content(service)
    assert board == "".join(slot(i, "done") + "\n" for i in range(RUNS))


def test_plain_store_backend_loses_concurrent_edits(service):
    """The baseline our backend fixes: deepagents' StoreBackend reads, replaces and puts blindly."""
    seed_board(service)
    plain = CompositeBackend(
        default=StateBackend(),
        routes={"/memories/": StoreBackend(namespace=lambda rt: NAMESPACE, store=service.store)},
    )
    results = concurrent_edits(service, plain, [(slot(i, "empty"), slot(i, "done")) for i in range(RUNS)])

    assert all(r.status == "success" for r in results)  # every run was told its edit landed...
    done = board_content(service).count(": done")
    assert done < RUNS, f"all {RUNS} edits survived the plain StoreBackend; the race did not happen"  # ...but some were lost
    assert done >= 1


def test_same_old_string_edited_twice_at_once_one_wins_the_other_conflicts(service):
    seed_board(service)
    gated = GatedStore(service.pool, parties=2)
    backend = CompositeBackend(
        default=StateBackend(),
        routes={"/memories/": TenantMemoryBackend(store=gated, resolver=service.resolver, policy=service.policy)},
    )
    results = concurrent_edits(service, backend, [(slot(3, "empty"), slot(3, "alice")), (slot(3, "empty"), slot(3, "bob"))])

    winners = [r for r in results if r.status == "success"]
    losers = [r for r in results if r.status != "success"]
    assert len(winners) == 1 and len(losers) == 1, [r.content for r in results]
    (loser,) = losers
    assert "edit conflict" in loser.content and "board.md" in loser.content, loser.content
    assert "Read the file again" in loser.content

    board = board_content(service)
    winner_name = "alice" if "alice" in board else "bob"
    assert board.count(slot(3, winner_name)) == 1
    assert slot(3, "empty") not in board
    assert slot(3, {"alice": "bob", "bob": "alice"}[winner_name]) not in board
    assert board.count(": empty") == RUNS - 1
