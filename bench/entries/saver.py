"""What thread ownership costs an agent turn: a real deep agent (scripted model) through the
tenant-aware saver against the same agent on plain `PostgresSaver`, on two scratch databases of
one server with the same schema."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from functools import partial

from deepagents import create_deep_agent
from langchain_core.messages import AIMessage
from langgraph.checkpoint.postgres import PostgresSaver

from bench.harness import Context, Entry, Measurement
from memory.scripted import ScriptedChatModel, tool_call

TURNS = Entry(
    "saver_turn_overhead",
    "agent turns (write_file + answer), each two turns on one thread: every checkpoint write and read",
    "plain PostgresSaver",
    "<= 1.10",
    lower_is_better=True,
)
ENTRIES = (TURNS,)

STEP = 5
"""Threads per step; the two sides' steps alternate (see `Context.compare_interleaved`)."""


def _turns() -> Iterator[AIMessage]:
    """Without end: a write_file call, then an answer."""
    while True:
        yield tool_call("write_file", file_path="/notes.md", content="a note kept in the thread\n")
        yield AIMessage(content="done")


def _agent(svc, checkpointer):
    model = ScriptedChatModel(messages=_turns())
    return create_deep_agent(model=model, backend=svc.backend(), store=svc.store, checkpointer=checkpointer)


def _threads(agent, count: int) -> None:
    for _ in range(count):
        config = {"configurable": {"thread_id": uuid.uuid4().hex}, "metadata": {"assistant_id": "bench"}}
        for turn in ("first", "second"):
            agent.invoke({"messages": [{"role": "user", "content": turn}]}, config=config)


def _steps(agent, threads: int) -> list[Callable[[], None]]:
    return [partial(_threads, agent, STEP) for _ in range(threads // STEP)]


def run(ctx: Context, entries: list[Entry]) -> Iterator[Measurement]:
    threads = ctx.size(200, 20)
    with ctx.service("saver_ours") as ours_svc, ctx.service("saver_plain") as plain_svc:
        ours = _agent(ours_svc, ours_svc.checkpointer)
        plain = _agent(plain_svc, PostgresSaver(plain_svc.pool))
        ctx.progress(f"timing {TURNS.name} ...")
        ours_s, baseline_s = ctx.compare_interleaved(_steps(ours, threads), _steps(plain, threads))
        yield Measurement(
            TURNS,
            ours_s,
            baseline_s,
            {
                "threads": threads,
                "turns_per_thread": 2,
                "reps": ctx.reps,
                "statistic": f"median seconds per round; sides alternate every {STEP} threads",
            },
        )
