"""`ls`, `glob` and `grep` inside PostgreSQL: SQL narrows the rows, deepagents' helpers decide.

`StoreBackend` fetches every item of the namespace (pages of 100) and filters in Python. Here one
query per call sends back only the rows that can matter: keys under the searched directory, for
`glob` keys ending in the pattern's literal tail, for `grep` rows whose text holds the pattern;
`ls` gets subdirectory names computed by the server. Those rows, in the order `store.search`
gives them, then go through the very helpers `StoreBackend` uses (`_glob_search_files`,
`grep_matches_from_files`, the same `ls` loop), so results are the same by construction.

A *listing* holds one call: its query and parameters, a collector for streamed rows (`add`) and
the result built from them (`result`). `stream` and `astream` feed it, sync and async twins.

TTLs: `StoreBackend` reads the whole namespace through `store.search`, and with refresh on read
(the store's `ttl` config, on by default) that restarts the TTL of every live row of the namespace
it returns. A listing does the same refresh, as one `UPDATE` in its own transaction before the
rows are read (`sql.PUSHDOWN_REFRESH_TTL`): the same rows, one statement per call.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import psycopg
from deepagents.backends.protocol import FileData, FileInfo, GlobResult, GrepResult, LsResult
from deepagents.backends.utils import (
    InvalidGlobPatternError,
    _glob_search_files,
    _normalize_path,
    compile_grep_include_glob,
    file_data_to_string,
    grep_matches_from_files,
)
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
from psycopg.rows import dict_row

from memory import sql
from memory.db import aconnection, connection

FETCH_ROWS = 1000
"""Rows per round trip from the server-side cursor."""

CURSOR_NAME = "memory_pushdown"

_GLOB_SPECIAL = frozenset("*?[]{}\\")
_LITERAL_TAIL_RE = re.compile(r"[^*?\[\]{}/\\]*\Z")

Convert = Callable[[Any], FileData]
"""`StoreBackend._convert_store_item_to_file_data`: reads the row's `.value`, may raise ValueError."""


class _Row:
    """The part of a store `Item` that the file-data conversion reads."""

    __slots__ = ("key", "value")

    def __init__(self, key: str, value: dict[str, Any]) -> None:
        self.key = key
        self.value = value


def storable(*texts: object) -> bool:
    """Whether PostgreSQL text can hold these strings (no NUL, valid UTF-8); a key never holds one
    that it cannot, so a search for it has nothing to fetch."""
    for text in texts:
        if isinstance(text, str):
            if "\x00" in text:
                return False
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def namespace_params(namespace: tuple[str, ...]) -> dict[str, str]:
    """The namespace and its descendants, as `PostgresStore.search` scopes them."""
    text = ".".join(namespace)
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return {"namespace": text, "namespace_like": escaped + ".%"}


def prefix_end(prefix: str) -> str:
    """The least string above every string starting with `prefix` (in code point order)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def search_scope(normalized_path: str) -> str:
    """Key prefix of the files `_filter_files_by_path` keeps for a directory (besides the exact key)."""
    return "/" if normalized_path == "/" else normalized_path + "/"


def glob_literals(pattern: str) -> tuple[str, str]:
    """`(first directory, tail)`: literal text every path matching `pattern` starts and ends with.

    Either may be empty (no narrowing). The first directory only applies to patterns with a
    `/` (matched against the path relative to the search root) and is taken from a fully
    literal first segment; the tail is the text after the last wildcard, separator or bracket.
    Patterns with a backslash escape get no narrowing.
    """
    if "\\" in pattern:
        return "", ""
    tail = _LITERAL_TAIL_RE.search(pattern).group()  # type: ignore[union-attr]  # always matches
    first = ""
    if "/" in pattern:
        head, separator, _ = pattern.lstrip("/").partition("/")
        if separator and head not in ("", ".", "..") and not _GLOB_SPECIAL & set(head):
            first = head + "/"
    return first, tail


def _file_data(row: dict[str, Any], convert: Convert) -> tuple[FileData, int] | None:
    """File data and UTF-8 size of a row as `StoreBackend` computes them; None when it skips the row."""
    value, size = row["value"], row.get("size")
    if size is not None:  # string content left in the database; its size came along
        value["content"] = ""
    try:
        file_data = convert(_Row(row["key"], value))
    except ValueError:
        return None
    if size is None:
        size = len(file_data_to_string(file_data).encode("utf-8"))
    return file_data, int(size)


class Listing:
    """One push-down call: `query` (None when nothing needs fetching), `params`, `add`, `result`.

    `low` and `scope` bound the keys wanted: from `low` up to the end of the `scope` prefix.
    """

    query: str | None = None
    params: dict[str, Any]
    namespace: dict[str, str]
    """`namespace_params` of the listed namespace: the rows a TTL refresh restarts."""
    low: str = ""
    scope: str = "/"

    def bound_params(self, by_code_point: bool) -> dict[str, Any]:
        """`params` with the key range, which only holds when keys sort by code point."""
        if by_code_point:
            return {**self.params, "low": self.low, "high": prefix_end(self.scope)}
        return {**self.params, "low": "", "high": None}

    def add(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError


class LsListing(Listing):
    """Direct children of `path` and its immediate subdirectories, as `StoreBackend.ls` lists them."""

    def __init__(self, namespace: tuple[str, ...], path: str, convert: Convert) -> None:
        self.scope = self.low = path if path.endswith("/") else path + "/"
        self.convert = convert
        self.query = sql.PUSHDOWN_LS if storable(self.scope) else None
        self.namespace = namespace_params(namespace)
        self.params = {**self.namespace, "scope": self.scope}
        self.infos: list[FileInfo] = []
        self.subdirs: set[str] = set()

    def add(self, row: dict[str, Any]) -> None:
        if row["subdir"] is not None:
            self.subdirs.add(self.scope + row["subdir"] + "/")
            return
        converted = _file_data(row, self.convert)
        if converted is None:
            return
        file_data, size = converted
        self.infos.append(
            {"path": row["key"], "is_dir": False, "size": size, "modified_at": file_data.get("modified_at", "")}
        )

    def result(self) -> LsResult:
        infos = self.infos + [FileInfo(path=subdir, is_dir=True, size=0, modified_at="") for subdir in sorted(self.subdirs)]
        infos.sort(key=lambda x: x.get("path", ""))
        return LsResult(entries=infos)


class _FilesListing(Listing):
    """Collects rows into the `files` mapping `StoreBackend` builds: key -> file data, later rows winning."""

    def __init__(self, convert: Convert) -> None:
        self.convert = convert
        self.files: dict[str, FileData] = {}
        self.sizes: dict[str, int] = {}

    def _plan(self, namespace: tuple[str, ...], path: str | None, glob: str | None) -> bool:
        """Set the common parameters; False when the helper will answer without any file."""
        self.namespace = namespace_params(namespace)
        try:
            normalized = _normalize_path(path)
        except ValueError:
            return False
        first, tail = "", ""
        if glob:
            try:
                compile_grep_include_glob(glob)
            except InvalidGlobPatternError:
                return False
            first, tail = glob_literals(glob)
        self.low, self.scope = normalized, search_scope(normalized) + first
        self.params = {**namespace_params(namespace), "exact": normalized, "scope": self.scope, "suffix": tail}
        return storable(normalized, first, tail)

    def add(self, row: dict[str, Any]) -> None:
        converted = _file_data(row, self.convert)
        if converted is not None:
            self.files[row["key"]], self.sizes[row["key"]] = converted


class GlobListing(_FilesListing):
    """`StoreBackend.glob` on the rows whose key can match."""

    def __init__(self, namespace: tuple[str, ...], pattern: str, path: str | None, convert: Convert) -> None:
        super().__init__(convert)
        self.pattern, self.path = pattern, path
        if self._plan(namespace, path, pattern):
            self.query = sql.PUSHDOWN_GLOB

    def result(self) -> GlobResult:
        try:
            found = _glob_search_files(self.files, self.pattern, self.path)
        except InvalidGlobPatternError as exc:
            return GlobResult(error=str(exc))
        if found == "No files found":
            return GlobResult(matches=[])
        infos: list[FileInfo] = []
        for path in found.split("\n"):
            file_data = self.files.get(path)
            infos.append(
                {
                    "path": path,
                    "is_dir": False,
                    "size": self.sizes[path] if file_data else 0,
                    "modified_at": file_data.get("modified_at", "") if file_data else "",
                }
            )
        return GlobResult(matches=infos)


class GrepListing(_FilesListing):
    """`StoreBackend.grep` on the rows that can hold a match."""

    def __init__(
        self,
        namespace: tuple[str, ...],
        pattern: str,
        path: str | None,
        glob: str | None,
        max_count: int | None,
        convert: Convert,
    ) -> None:
        super().__init__(convert)
        self.pattern, self.path, self.glob, self.max_count = pattern, path, glob, max_count
        if self._plan(namespace, path, glob) and storable(pattern):
            self.query = sql.PUSHDOWN_GREP
            literal = isinstance(pattern, str)
            self.params |= {"pattern": pattern if literal else "", "match_all": not literal}

    def result(self) -> GrepResult:
        return grep_matches_from_files(self.files, self.pattern, self.path, self.glob, max_count=self.max_count)


# -- feeding a listing from the database (sync and async twins) ------------------------------


_KEYS_BY_CODE_POINT: weakref.WeakKeyDictionary[object, bool] = weakref.WeakKeyDictionary()
"""Per store: whether its keys sort by code point (asked once; the database's collation)."""


def _by_code_point(store: PostgresStore, conn: psycopg.Connection) -> bool:
    if store not in _KEYS_BY_CODE_POINT:
        row = conn.cursor(row_factory=dict_row).execute(sql.PUSHDOWN_KEYS_SORT_BY_CODE_POINT).fetchone()
        _KEYS_BY_CODE_POINT[store] = bool(row and row["by_code_point"])
    return _KEYS_BY_CODE_POINT[store]


async def _aby_code_point(store: AsyncPostgresStore, conn: psycopg.AsyncConnection) -> bool:
    if store not in _KEYS_BY_CODE_POINT:
        cursor = await conn.cursor(row_factory=dict_row).execute(sql.PUSHDOWN_KEYS_SORT_BY_CODE_POINT)
        row = await cursor.fetchone()
        _KEYS_BY_CODE_POINT[store] = bool(row and row["by_code_point"])
    return _KEYS_BY_CODE_POINT[store]


def refreshes_on_read(store: PostgresStore | AsyncPostgresStore) -> bool:
    """Whether `store.search` would restart the TTLs of the rows it returns (LangGraph's default)."""
    config = store.ttl_config
    return bool(config.get("refresh_on_read", True)) if config else True


def stream(store: PostgresStore, listing: Listing) -> Any:
    """Run the listing's query on the store's pool (or shared connection) and return its result.

    Rows come through a server-side cursor, `FETCH_ROWS` at a time. (libpq's single-row and
    chunked modes, `cursor.stream`, leave pooled connections unusable for the pipeline mode
    PostgresStore runs its batches in, so they are avoided.)
    """
    refresh = refreshes_on_read(store)
    if listing.query is not None or refresh:
        shared_connection = isinstance(store.conn, psycopg.Connection)
        with store.lock if shared_connection else nullcontext(), connection(store.conn) as conn:
            params = listing.bound_params(_by_code_point(store, conn)) if listing.query is not None else {}
            with conn.transaction():
                if refresh:
                    conn.execute(sql.PUSHDOWN_REFRESH_TTL, listing.namespace)
                if listing.query is not None:
                    with conn.cursor(CURSOR_NAME, binary=True, row_factory=dict_row) as cursor:
                        cursor.itersize = FETCH_ROWS
                        cursor.execute(listing.query, params)
                        for row in cursor:
                            listing.add(row)
    return listing.result()


async def astream(store: AsyncPostgresStore, listing: Listing) -> Any:
    """Async twin of `stream`."""
    refresh = refreshes_on_read(store)
    if listing.query is not None or refresh:
        shared_connection = isinstance(store.conn, psycopg.AsyncConnection)
        async with store.lock if shared_connection else nullcontext(), aconnection(store.conn) as conn:
            params = listing.bound_params(await _aby_code_point(store, conn)) if listing.query is not None else {}
            async with conn.transaction():
                if refresh:
                    await conn.execute(sql.PUSHDOWN_REFRESH_TTL, listing.namespace)
                if listing.query is not None:
                    async with conn.cursor(CURSOR_NAME, binary=True, row_factory=dict_row) as cursor:
                        cursor.itersize = FETCH_ROWS
                        await cursor.execute(listing.query, params)
                        async for row in cursor:
                            listing.add(row)
    return listing.result()
