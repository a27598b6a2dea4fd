"""The main job: two tenants' agents remember across threads and never see each other's memory.

The demo's tenants are `demo-acme` and `demo-globex`, named so that they never are a real
tenant of the database it runs on (a configured one included).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from deepagents import create_deep_agent
from langchain_core.messages import ToolMessage

from memory.errors import MemoryServiceError
from memory.scripted import script, tool_call
from memory.service import MemoryService

DEMO_TENANTS = {
    "demo-acme": "prefers metric units and short answers",
    "demo-globex": "prefers imperial units and detail",
}
"""Tenants of the demo only: a real tenant's memory is never written by `memory demo`."""


class DemoModelError(MemoryServiceError):
    """The chat model given to the demo could not be created."""
BASE_PROMPT = "You are a helpful assistant."


@dataclass
class TenantOutcome:
    tenant: str
    remembered: bool = False
    scratch_forgotten: bool = False
    isolated: bool = False
    files: int = 0
    bytes: int = 0
    transcript: list[str] = field(default_factory=list)


def _first_thread_model(tenant: str, preference: str):
    return script(
        tool_call("write_file", file_path="/memories/user_prefs.md", content=f"# {tenant}\n- {preference}\n"),
        tool_call("write_file", file_path="/scratch.md", content="working notes for this thread only\n"),
        tool_call("edit_file", file_path="/memories/user_prefs.md", old_string=f"# {tenant}\n", new_string=f"# {tenant} (user preferences)\n"),
        tool_call("write_file", file_path="/memories/project_context.md", content=f"{tenant} is evaluating deepagents-memory\n"),
        "Noted, I saved that to memory.",
    )


def _second_thread_model():
    return script(
        tool_call("ls", path="/memories/"),
        tool_call("read_file", file_path="/memories/user_prefs.md"),
        tool_call("read_file", file_path="/scratch.md"),
        tool_call("grep", pattern="prefers", path="/memories/"),
        "Here is what I remember about you.",
    )


def _tool_outputs(result: dict[str, Any]) -> list[str]:
    return [str(m.content) for m in result["messages"] if isinstance(m, ToolMessage)]


def _run(svc: MemoryService, model: Any, tenant: str, thread_id: str, text: str) -> list[str]:
    agent = create_deep_agent(
        model=model,
        backend=svc.backend(),
        store=svc.store,
        checkpointer=svc.checkpointer,
        system_prompt=svc.system_prompt(BASE_PROMPT),
    )
    config = {"configurable": {"thread_id": thread_id}, "metadata": {"assistant_id": tenant}}
    return _tool_outputs(agent.invoke({"messages": [{"role": "user", "content": text}]}, config=config))


def run_demo(svc: MemoryService, model_name: str | None = None) -> list[TenantOutcome]:
    """Run two threads per tenant: the first saves memory, the second (a new thread) recalls it."""
    run_id = uuid.uuid4().hex[:8]
    outcomes = []
    for tenant, preference in DEMO_TENANTS.items():
        first = real_model(model_name) if model_name else _first_thread_model(tenant, preference)
        second = real_model(model_name) if model_name else _second_thread_model()
        outcome = TenantOutcome(tenant)
        outcome.transcript += _run(svc, first, tenant, f"{tenant}-{run_id}-1", f"Please remember: I {preference}.")
        recall = _run(svc, second, tenant, f"{tenant}-{run_id}-2", "What do you remember about my preferences?")
        outcome.transcript += recall
        joined = "\n".join(recall)
        others = [p for t, p in DEMO_TENANTS.items() if t != tenant]
        outcome.remembered = preference in joined
        outcome.scratch_forgotten = any("/scratch.md" in out and "not found" in out for out in recall)
        outcome.isolated = not any(p in joined for p in others)
        outcomes.append(outcome)
    usage = {u.tenant: u for u in svc.memory_usage()}
    for outcome in outcomes:
        if outcome.tenant in usage:
            outcome.files, outcome.bytes = usage[outcome.tenant].files, usage[outcome.tenant].bytes
    return outcomes


def real_model(model_name: str):
    """`provider:name` through langchain's init_chat_model, or `DemoModelError` saying what is missing."""
    from langchain.chat_models import init_chat_model

    try:
        return init_chat_model(model_name)
    except Exception as exc:  # noqa: BLE001 - unknown provider, package or API key: all one line
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 300:
            reason = reason[:300] + "…"
        raise DemoModelError(
            f"--model {model_name}: {reason}; give provider:name (e.g. openai:gpt-4o-mini), install the "
            "provider's package (pip install langchain-openai) and set its API key (OPENAI_API_KEY)"
        ) from exc
