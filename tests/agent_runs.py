"""Running a real deep agent as one tenant, shared by the test modules."""

from __future__ import annotations

import uuid

from deepagents import create_deep_agent
from langchain_core.messages import ToolMessage

from memory import MemoryService
from memory.scripted import script


def deep_agent(svc: MemoryService, *calls):
    """A real deep agent on the service's backend, store and saver, its model playing back `calls`."""
    return create_deep_agent(
        model=script(*calls, "done"),
        backend=svc.backend(),
        store=svc.store,
        checkpointer=svc.checkpointer,
        system_prompt=svc.system_prompt("You are a test assistant."),
    )


def run_agent(svc: MemoryService, tenant: str, *calls, thread_id: str | None = None) -> list[ToolMessage]:
    """One agent run of `tenant` playing back `calls`; the tool results, in order."""
    agent = deep_agent(svc, *calls)
    config = {"configurable": {"thread_id": thread_id or uuid.uuid4().hex}, "metadata": {"assistant_id": tenant}}
    result = agent.invoke({"messages": [{"role": "user", "content": "go"}]}, config=config)
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]
