"""A real deep agent per tenant: every file tool on /memories/ lands in the store, scoped to the tenant."""

from __future__ import annotations

import ast

from langchain_core.messages import ToolMessage

from memory import MemoryService
from memory.scripted import tool_call
from helpers import run_agent

SERVERS = ("pg18",)
"""Version-independent: the embedded server only (conftest.pytest_generate_tests)."""




def store_rows(svc: MemoryService) -> dict[tuple[tuple[str, ...], str], str]:
    """Every row of the store table: (namespace, key) -> content."""
    return {(tuple(item.namespace), item.key): item.value["content"] for item in svc.store.search((), limit=10_000)}


def listing(message: ToolMessage) -> list[str]:
    """The paths of an `ls` or `glob` tool result."""
    return ast.literal_eval(str(message.content))


def test_file_tools_on_memories_write_tenant_rows(service):
    tools = run_agent(
        service,
        "acme",
        tool_call("write_file", file_path="/memories/notes/a.md", content="alpha line\nbeta line\n"),
        tool_call("write_file", file_path="/memories/b.txt", content="gamma\n"),
        tool_call("read_file", file_path="/memories/notes/a.md"),
        tool_call("edit_file", file_path="/memories/notes/a.md", old_string="beta", new_string="BETA"),
        tool_call("ls", path="/memories/"),
        tool_call("ls", path="/memories/notes/"),
        tool_call("glob", pattern="**/*.md", path="/memories/"),
        tool_call("grep", pattern="BETA", path="/memories/", output_mode="content"),
        tool_call("read_file", file_path="/memories/notes/a.md"),
    )
    write_a, write_b, read, edit, ls_root, ls_notes, glob, grep, reread = tools

    assert [t.status for t in tools] == ["success"] * 9
    assert write_a.content == "Updated file /memories/notes/a.md"
    assert write_b.content == "Updated file /memories/b.txt"
    assert "alpha line" in read.content and "beta line" in read.content
    assert edit.name == "edit_file" and "1 instance" in edit.content and "/memories/notes/a.md" in edit.content
    assert listing(ls_root) == ["/memories/b.txt", "/memories/notes/"]
    assert listing(ls_notes) == ["/memories/notes/a.md"]
    assert listing(glob) == ["/memories/notes/a.md"]
    assert "/memories/notes/a.md" in grep.content and "BETA line" in grep.content
    assert "BETA line" in reread.content and "beta line" not in reread.content

    assert store_rows(service) == {
        (("acme", "memories"), "/notes/a.md"): "alpha line\nBETA line\n",
        (("acme", "memories"), "/b.txt"): "gamma\n",
    }


def test_memory_is_recalled_in_a_new_thread(service):
    run_agent(service, "acme", tool_call("write_file", file_path="/memories/prefs.md", content="metric units\n"))
    (ls, read, grep) = run_agent(
        service,
        "acme",
        tool_call("ls", path="/memories/"),
        tool_call("read_file", file_path="/memories/prefs.md"),
        tool_call("grep", pattern="metric", output_mode="content"),
    )
    assert listing(ls) == ["/memories/prefs.md"]
    assert read.status == "success" and "metric units" in read.content
    assert "/memories/prefs.md" in grep.content and "metric units" in grep.content


def test_missing_memory_file_is_a_tool_error_not_a_crash(service):
    read, edit = run_agent(
        service,
        "acme",
        tool_call("read_file", file_path="/memories/nope.md"),
        tool_call("edit_file", file_path="/memories/nope.md", old_string="a", new_string="b"),
    )
    assert read.status == "error" and "not found" in read.content and "nope.md" in read.content
    assert edit.status == "error" and "not found" in edit.content and "nope.md" in edit.content
    assert store_rows(service) == {}


def test_root_scratch_file_stays_out_of_the_store(service):
    write_scratch, write_memory, read_scratch = run_agent(
        service,
        "acme",
        tool_call("write_file", file_path="/scratch.md", content="draft for this thread only\n"),
        tool_call("write_file", file_path="/memories/keep.md", content="keep me\n"),
        tool_call("read_file", file_path="/scratch.md"),
    )
    assert write_scratch.status == write_memory.status == "success"
    assert "draft for this thread only" in read_scratch.content  # the thread itself sees it

    rows = store_rows(service)
    assert rows == {(("acme", "memories"), "/keep.md"): "keep me\n"}
    assert not any(key.endswith("scratch.md") for _, key in rows)

    read_again, ls_root, read_memory = run_agent(
        service,
        "acme",
        tool_call("read_file", file_path="/scratch.md"),
        tool_call("ls", path="/"),
        tool_call("read_file", file_path="/memories/keep.md"),
    )
    assert read_again.status == "error" and "not found" in read_again.content
    assert "/scratch.md" not in listing(ls_root)
    assert "keep me" in read_memory.content
