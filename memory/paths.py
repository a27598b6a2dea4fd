"""What a memory file's path and content may hold, checked before anything reaches the database.

PostgreSQL text and jsonb cannot hold NUL (U+0000) or an unpaired surrogate (not encodable as
UTF-8), and the `store` primary key (prefix, key) must fit a btree row; a path or content breaking
one of these would raise a database error out of the agent's run. The tools refuse them instead,
with an error the agent can act on, and write nothing.
"""

from __future__ import annotations

MAX_PATH_BYTES = 1024
"""Longest memory path (the key under /memories/), in UTF-8 bytes."""


def _unstorable(text: str) -> str | None:
    """Why PostgreSQL cannot store `text` (None: it can)."""
    if "\x00" in text:
        return "contains a NUL character (\\x00)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains an unpaired surrogate ({text[exc.start]!r} at position {exc.start}), which is not valid Unicode"
    return None


def path_error(path: object) -> str | None:
    """The tool error for a path the store cannot hold (None: a valid path)."""
    if not isinstance(path, str):
        return f"Error: the file path must be a string, got {type(path).__name__}."
    shown = path[:80] + ("…" if len(path) > 80 else "")
    if why := _unstorable(path):
        return f"Error: invalid file path {shown!r}: it {why}. Use a plain path such as /notes/todo.md; nothing was written."
    size = len(path.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        return (
            f"Error: invalid file path {shown!r}: it is {size} bytes long (UTF-8); the limit is {MAX_PATH_BYTES}. "
            "Use a shorter path; nothing was written."
        )
    return None


def content_error(path: str, content: object) -> str | None:
    """The tool error for content the store cannot hold (None: it can). Size limits are quotas
    (`memory.quotas`), enforced by the database."""
    if not isinstance(content, str):
        return f"Error: the content of '{path}' must be a string, got {type(content).__name__}; nothing was written."
    if why := _unstorable(content):
        return f"Error: cannot write '{path}': the content {why}. Remove it and write again; nothing was written."
    return None
