"""The `/memories/` conventions appended to an agent's system prompt."""

from __future__ import annotations

MEMORY_CONVENTIONS = """\
## Long-term memory: /memories/

You have a persistent memory folder at `/memories/`. Files there survive across conversations
(threads); every other path (for example `/notes.md` or `/draft.txt` at the root) is a working
file of this conversation only and is gone when it ends.

- Save to `/memories/` what should outlive this conversation: the user's preferences in
  `/memories/user_prefs.md`, the project's context and decisions in `/memories/project_context.md`,
  and patterns or lessons you learned in `/memories/learned_patterns.md` (add topic files as needed).
- Keep drafts, scratch work and intermediate results at the root, not in `/memories/`.
- Before answering anything about the user, their preferences or their projects, read the
  relevant files in `/memories/` (use `ls /memories/` first).
- Update memory files with `edit_file` when something changes; keep them short and current.
- Never store secrets (passwords, API keys, tokens) in `/memories/`.
"""


def with_memory_conventions(base: str | None, conventions: str | None = None) -> str:
    """`base`, then the conventions (the configured text, or the default one)."""
    text = (conventions or MEMORY_CONVENTIONS).strip()
    base = (base or "").rstrip()
    return f"{base}\n\n{text}\n" if base else f"{text}\n"
