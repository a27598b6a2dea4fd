"""Bad paths and content from a careless or hostile agent: a tool error, nothing written, the run goes on."""

from __future__ import annotations

import asyncio

import psycopg

from memory import bind_tenant
from memory.paths import MAX_PATH_BYTES
from memory.scripted import tool_call
from helpers import run_agent

SERVERS = ("pg18",)
"""Version-independent: the embedded server only (conftest.pytest_generate_tests)."""

LONG_PATH = "/memories/" + "x" * 10_000 + ".md"


def store_count(svc) -> int:
    with psycopg.connect(svc.database_url) as conn:
        return conn.execute("SELECT count(*) FROM store").fetchone()[0]


def test_agent_run_with_nul_lone_surrogate_and_oversized_path_finishes_with_tool_errors(service):
    tools = run_agent(
        service,
        "acme",
        tool_call("write_file", file_path="/memories/a\x00b.md", content="path with NUL"),
        tool_call("write_file", file_path="/memories/nul.md", content="content with \x00 NUL"),
        tool_call("write_file", file_path="/memories/\ud800.md", content="lone surrogate in the path"),
        tool_call("write_file", file_path="/memories/surrogate.md", content="lone \udc00 surrogate"),
        tool_call("write_file", file_path=LONG_PATH, content="oversized path"),
        tool_call("read_file", file_path="/memories/a\x00b.md"),
        tool_call("read_file", file_path=LONG_PATH),
        tool_call("edit_file", file_path="/memories/\ud800.md", old_string="a", new_string="b"),
        tool_call("ls", path="/memories/"),
    )
    assert len(tools) == 9, [t.content for t in tools]
    *refused, ls = tools
    for message in refused:
        assert "Error" in str(message.content) or message.status == "error", message.content
    assert "NUL" in str(refused[0].content) and "NUL" in str(refused[1].content)
    assert "surrogate" in str(refused[2].content) and "surrogate" in str(refused[3].content)
    assert f"the limit is {MAX_PATH_BYTES}" in str(refused[4].content)
    assert all(not str(m.content).startswith("Error: Error") for m in refused)
    assert store_count(service) == 0


def test_backend_calls_refuse_bad_paths_and_keep_nul_bytes_of_uploads_as_binary(service):
    backend = service.memory_backend()
    with bind_tenant("acme"):
        uploaded = backend.upload_files([("/a\x00.md", b"x"), ("/nul.bin", b"a\x00b"), ("/" + "y" * 2000, b"z")])
        assert [r.error for r in uploaded] == ["invalid_path", None, "invalid_path"]
        assert "NUL" in backend.delete("/x\x00").error
        assert "surrogate" in backend.edit("/\udfff", "a", "b").error
        assert "surrogate" in backend.edit("/nul.bin", "a", "\udfff").error
        downloaded = backend.download_files(["/a\x00", "/nul.bin", "/missing"])
        assert [(d.error, d.content) for d in downloaded] == [("invalid_path", None), (None, b"a\x00b"), ("file_not_found", None)]
        assert "NUL" in asyncio.run(backend.awrite("/ok.md", "\x00")).error
        assert "NUL" in asyncio.run(backend.aread("/\x00")).error
    assert store_count(service) == 1  # the binary upload only
