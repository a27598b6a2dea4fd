"""Tenants: siblings never meet, a run with no tenant or a bad one touches nothing, resolution order."""

from __future__ import annotations

import ast
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from deepagents import create_deep_agent
from langchain_core.messages import ToolMessage

from memory import (
    InvalidTenantId,
    MemoryService,
    TenantNotResolved,
    bind_tenant,
    tenant_namespace,
    validate_tenant_id,
)
from memory.scripted import script, tool_call

SERVERS = ("pg18",)
"""Version-independent: the embedded server only (conftest.pytest_generate_tests)."""


@dataclass
class TenantContext:
    """A runtime context carrying the tenant, as `create_deep_agent(context_schema=...)` takes it."""

    assistant_id: str | None = None


def run_agent(
    svc: MemoryService,
    *calls,
    tenant: str | None = None,
    metadata: dict[str, Any] | None = None,
    configurable: dict[str, Any] | None = None,
    context: TenantContext | None = None,
) -> list[ToolMessage]:
    """One agent run playing back `calls`, the tenant given wherever the caller says; the tool results."""
    agent = create_deep_agent(
        model=script(*calls, "done"),
        backend=svc.backend(),
        store=svc.store,
        checkpointer=svc.checkpointer,
        system_prompt=svc.system_prompt("You are a test assistant."),
        context_schema=TenantContext,
    )
    metadata = dict(metadata or {})
    if tenant is not None:
        metadata["assistant_id"] = tenant
    config = {"configurable": {"thread_id": uuid.uuid4().hex, **(configurable or {})}, "metadata": metadata}
    result = agent.invoke({"messages": [{"role": "user", "content": "go"}]}, config=config, context=context)
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def store_rows(svc: MemoryService) -> dict[tuple[tuple[str, ...], str], str]:
    """Every row of the store table: (namespace, key) -> content."""
    return {(tuple(item.namespace), item.key): item.value["content"] for item in svc.store.search((), limit=10_000)}


# -- siblings ---------------------------------------------------------------------------

SIBLINGS = {"acme": "alpha", "acme-corp": "bravo", "acme_corp": "charlie"}
"""Tenant -> a word no other tenant's word contains (tenant ids are substrings of each other)."""


def test_sibling_tenants_never_see_each_other_through_any_tool(service):
    for tenant, word in SIBLINGS.items():
        run_agent(
            service,
            tool_call("write_file", file_path="/memories/shared.md", content=f"token-{word} shared\n"),
            tool_call("write_file", file_path=f"/memories/{word}.md", content=f"token-{word} private\n"),
            tenant=tenant,
        )

    for tenant, word in SIBLINGS.items():
        others = [w for t, w in SIBLINGS.items() if t != tenant]
        probes = []
        for other in others:
            probes += [
                tool_call("read_file", file_path=f"/memories/{other}.md"),
                tool_call("edit_file", file_path=f"/memories/{other}.md", old_string=f"token-{other}", new_string="hacked"),
            ]
        ls, glob, glob_all, grep, read_shared, *probed, write_shared = run_agent(
            service,
            tool_call("ls", path="/memories/"),
            tool_call("glob", pattern="**/*", path="/memories/"),
            tool_call("glob", pattern="**/*.md"),
            tool_call("grep", pattern="token-", output_mode="content"),
            tool_call("read_file", file_path="/memories/shared.md"),
            *probes,
            tool_call("write_file", file_path="/memories/shared.md", content=f"{word} rewrote\n"),
            tenant=tenant,
        )
        mine = {"/memories/shared.md", f"/memories/{word}.md"}
        for listing_tool in (ls, glob, glob_all):
            assert listing_tool.status == "success"
            shown = set(ast.literal_eval(listing_tool.content))
            assert shown == mine, f"{tenant} {listing_tool.name} shows {shown}"
        assert f"token-{word} shared" in grep.content and f"token-{word} private" in grep.content
        assert f"token-{word} shared" in read_shared.content
        for other in others:
            assert f"token-{other}" not in grep.content + read_shared.content
            assert f"/memories/{other}.md" not in grep.content
        for result in probed:
            assert result.status == "error" and "not found" in result.content, (tenant, result.content)
        assert write_shared.status == "success"

    expected = {}
    for tenant, word in SIBLINGS.items():
        expected[((tenant, "memories"), "/shared.md")] = f"{word} rewrote\n"
        expected[((tenant, "memories"), f"/{word}.md")] = f"token-{word} private\n"
    assert store_rows(service) == expected


# -- no tenant ----------------------------------------------------------------------------

EVERY_TOOL = [
    tool_call("write_file", file_path="/memories/x.md", content="leak\n"),
    tool_call("read_file", file_path="/memories/seed.md"),
    tool_call("edit_file", file_path="/memories/seed.md", old_string="seed", new_string="leak"),
    tool_call("ls", path="/memories/"),
    tool_call("glob", pattern="**/*.md"),
    tool_call("grep", pattern="seed"),
]


def test_run_without_tenant_raises_and_writes_nothing(service):
    with pytest.raises(TenantNotResolved, match="no assistant_id for this run"):
        run_agent(service, tool_call("write_file", file_path="/memories/x.md", content="leak\n"))
    assert store_rows(service) == {}


@pytest.mark.parametrize("call", EVERY_TOOL, ids=lambda c: c.tool_calls[0]["name"])
def test_every_tool_fails_closed_without_tenant(service, call):
    """The run raises `TenantNotResolved` before any tool runs: the tenant-aware checkpointer refuses
    to load or save the run's thread (even `glob`, whose tool would turn a backend error into a result)."""
    run_agent(service, tool_call("write_file", file_path="/memories/seed.md", content="seed\n"), tenant="acme")
    before = store_rows(service)
    no_tenant = {"metadata": {"user": "someone"}, "configurable": {"user_id": "u1"}, "context": TenantContext()}
    with pytest.raises(TenantNotResolved, match="no assistant_id for this run"):
        run_agent(service, call, **no_tenant)
    assert store_rows(service) == before == {(("acme", "memories"), "/seed.md"): "seed\n"}


RESOLUTION_CASES = [
    ({"metadata": {"assistant_id": "meta"}, "configurable": {"assistant_id": "conf"}, "context": TenantContext("ctx")}, "meta"),
    ({"metadata": {"assistant_id": "meta"}, "context": TenantContext("ctx")}, "meta"),
    ({"configurable": {"assistant_id": "conf"}, "context": TenantContext("ctx")}, "conf"),
    ({"context": TenantContext("ctx")}, "ctx"),
]


def test_resolution_order_metadata_then_configurable_then_context(service):
    for index, (where, expected) in enumerate(RESOLUTION_CASES):
        run_agent(service, tool_call("write_file", file_path=f"/memories/case{index}.md", content=f"{index}\n"), **where)
    assert store_rows(service) == {
        ((expected, "memories"), f"/case{index}.md"): f"{index}\n" for index, (_, expected) in enumerate(RESOLUTION_CASES)
    }


def test_extra_scope_key_nests_the_namespace_and_fails_closed(database_url):
    with MemoryService.open(
        database_url=database_url, namespace_scope=["assistant_id", "user_id"], database_pool_max_size=4
    ) as svc:
        run_agent(svc, tool_call("write_file", file_path="/memories/prefs.md", content="u1 likes tea\n"), metadata={"assistant_id": "acme", "user_id": "u1"})
        (read_other,) = run_agent(svc, tool_call("read_file", file_path="/memories/prefs.md"), metadata={"assistant_id": "acme", "user_id": "u2"})
        assert read_other.status == "error" and "not found" in read_other.content
        (read_own,) = run_agent(svc, tool_call("read_file", file_path="/memories/prefs.md"), tenant="acme", configurable={"user_id": "u1"})
        assert "u1 likes tea" in read_own.content

        expected = {(("acme", "u1", "memories"), "/prefs.md"): "u1 likes tea\n"}
        assert store_rows(svc) == expected

        with pytest.raises(TenantNotResolved, match="no user_id for this run"):
            run_agent(svc, tool_call("write_file", file_path="/memories/prefs.md", content="leak\n"), tenant="acme")
        with pytest.raises(InvalidTenantId, match="user_id"):
            run_agent(svc, tool_call("write_file", file_path="/memories/prefs.md", content="leak\n"), metadata={"assistant_id": "acme", "user_id": "u.1"})
        assert store_rows(svc) == expected


# -- adversarial ids --------------------------------------------------------------------------

BAD_TENANT_IDS = ["", "a.b", "*", "a*", "?", "a b", "a\n", "\x00", "%", "a/b", "x" * 129]


@pytest.mark.parametrize("bad", BAD_TENANT_IDS, ids=repr)
def test_bad_tenant_id_is_refused_with_one_clear_line(bad):
    with pytest.raises(InvalidTenantId) as refused:
        validate_tenant_id(bad)
    message = str(refused.value)
    assert message.startswith("assistant_id ") and "\n" not in message
    assert "limit is 128" in message if len(bad) > 128 else ("empty" in message if not bad else "use only" in message)
    with pytest.raises(InvalidTenantId), bind_tenant(bad):
        pass


def test_non_string_tenant_id_is_refused():
    with pytest.raises(InvalidTenantId, match="must be a string"):
        validate_tenant_id(42)


def test_longest_tenant_id_is_accepted():
    longest = "a" * 128
    assert validate_tenant_id(longest) == longest
    assert tenant_namespace(longest) == (longest, "memories")


def test_agent_run_with_bad_tenant_id_raises_and_writes_nothing(service):
    for bad in BAD_TENANT_IDS:
        with pytest.raises(InvalidTenantId):
            run_agent(service, tool_call("write_file", file_path="/memories/x.md", content="leak\n"), tenant=bad)
        with pytest.raises(InvalidTenantId):
            run_agent(service, tool_call("write_file", file_path="/memories/x.md", content="leak\n"), context=TenantContext(bad))
    assert store_rows(service) == {}

    longest = "a" * 128
    run_agent(service, tool_call("write_file", file_path="/memories/x.md", content="ok\n"), tenant=longest)
    assert store_rows(service) == {((longest, "memories"), "/x.md"): "ok\n"}
