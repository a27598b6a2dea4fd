"""Finding PostgreSQL client programs (pg_dump, pg_restore, psql) able to talk to a given server.

`pg_dump` refuses a server whose major version is newer than its own, so we pick, among the
embedded server's binaries, PATH and `/usr/lib/postgresql/*/bin`, the newest program whose major
version is at least the server's. `MEMORY_PG_BIN` (a directory) is looked at first.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from memory.errors import MemoryServiceError

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class PgToolError(MemoryServiceError):
    """No suitable PostgreSQL client program was found."""


@dataclass(frozen=True)
class PgTool:
    name: str
    path: Path
    major: int
    version: str

    def __str__(self) -> str:
        return f"{self.path} ({self.version})"


def candidate_dirs() -> list[Path]:
    """Where client programs may live, in order of preference."""
    dirs: list[Path] = []
    if env := os.environ.get("MEMORY_PG_BIN"):
        dirs.append(Path(env))
    try:
        from memory.embedded import embedded_bin_dir

        dirs.append(Path(embedded_bin_dir()))
    except Exception:  # noqa: BLE001 - the embedded package is optional for an external server
        pass
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry:
            dirs.append(Path(entry))
    dirs.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def tool_version(path: Path) -> tuple[int, str] | None:
    """(major, "18.1") of a client program, None when it does not run or does not say."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(out)
    if not match:
        return None
    return int(match.group(1)), f"{match.group(1)}.{match.group(2) or 0}"


def available(name: str, dirs: list[Path] | None = None) -> list[PgTool]:
    """Every runnable `name` found, newest major first."""
    found: dict[Path, PgTool] = {}
    for d in candidate_dirs() if dirs is None else dirs:
        path = d / name
        if not path.is_file() or not os.access(path, os.X_OK):
            continue
        real = path.resolve()
        if real in found:
            continue
        version = tool_version(path)
        if version is not None:
            found[real] = PgTool(name, path, version[0], version[1])
    return sorted(found.values(), key=lambda t: t.major, reverse=True)


def find_tool(name: str, server_major: int, dirs: list[Path] | None = None) -> PgTool:
    """The newest `name` whose major version >= `server_major`, else one clear `PgToolError`."""
    tools = available(name, dirs)
    for tool in tools:
        if tool.major >= server_major:
            return tool
    if not tools:
        raise PgToolError(
            f"no {name} found (looked in MEMORY_PG_BIN, the embedded server's bin, PATH and /usr/lib/postgresql/*/bin); "
            f"install the PostgreSQL {server_major} client programs or set MEMORY_PG_BIN to their directory"
        )
    newest = tools[0]
    raise PgToolError(
        f"the server runs PostgreSQL {server_major} but the newest {name} found is {newest.version} at {newest.path}; "
        f"install the PostgreSQL {server_major} client programs (e.g. postgresql-client-{server_major}) "
        f"or set MEMORY_PG_BIN to a directory holding them"
    )


def sibling(tool: PgTool, name: str) -> PgTool:
    """`name` from the same directory as `tool` (psql next to pg_restore), else the newest anywhere."""
    path = tool.path.parent / name
    version = tool_version(path) if path.is_file() else None
    if version is not None:
        return PgTool(name, path, version[0], version[1])
    return find_tool(name, tool.major)


def connection_args(url: str) -> tuple[str, dict[str, str]]:
    """`(--dbname=..., env)` for a client program: the connection string without its password, and
    the password as PGPASSWORD, so that it never shows in the process list (`ps`)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise PgToolError(f"the database URL cannot be parsed: {exc}") from None
    password = params.pop("password", None)
    return f"--dbname={make_conninfo(**params)}", ({"PGPASSWORD": str(password)} if password else {})
