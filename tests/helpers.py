"""Helpers shared by the test modules: a real deep agent run as one tenant (sync and async), and
the `memory` command line in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from deepagents import create_deep_agent
from langchain_core.messages import ToolMessage

from memory import MemoryService
from memory.scripted import script

REPO = Path(__file__).resolve().parents[1]
CLI_TIMEOUT_S = 120


def deep_agent(svc: MemoryService, *calls):
    """A real deep agent on the service's backend, store and saver, its model playing back `calls`."""
    return create_deep_agent(
        model=script(*calls, "done"),
        backend=svc.backend(),
        store=svc.store,
        checkpointer=svc.checkpointer,
        system_prompt=svc.system_prompt("You are a test assistant."),
    )


def _config(tenant: str, thread_id: str | None) -> dict:
    return {"configurable": {"thread_id": thread_id or uuid.uuid4().hex}, "metadata": {"assistant_id": tenant}}


def run_agent(svc: MemoryService, tenant: str, *calls, thread_id: str | None = None) -> list[ToolMessage]:
    """One agent run of `tenant` playing back `calls`; the tool results, in order."""
    result = deep_agent(svc, *calls).invoke({"messages": [{"role": "user", "content": "go"}]}, config=_config(tenant, thread_id))
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


async def arun_agent(svc: MemoryService, tenant: str, *calls, thread_id: str | None = None) -> list[ToolMessage]:
    """`run_agent` through `ainvoke` (the async store and saver of `MemoryService.aopen()`)."""
    agent = deep_agent(svc, *calls)
    result = await agent.ainvoke({"messages": [{"role": "user", "content": "go"}]}, config=_config(tenant, thread_id))
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def memory_cli(*args: str, cwd: Path | str = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m memory ARGS` (from the repository unless `cwd`), with `env` over an environment free of
    MEMORY_* and DATABASE_URL."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_") and k != "DATABASE_URL"}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "memory", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
