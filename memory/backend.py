"""`TenantMemoryBackend`: a `StoreBackend` scoped to the run's tenant, with lossless concurrent edits."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from contextlib import nullcontext
from typing import Any

import psycopg

from deepagents.backends import StoreBackend
from deepagents.backends.protocol import (
    EditResult,
    FileUploadResponse,
    GlobResult,
    GrepResult,
    LsResult,
    WriteResult,
)
from deepagents.backends.utils import (
    create_file_data,
    file_data_to_string,
    perform_string_replacement,
    update_file_data,
)
from langgraph.store.base import Item
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
from psycopg.types.json import Jsonb

from memory import pushdown, sql
from memory.db import aconnection, connection
from memory.retention import RetentionPolicy
from memory.tenancy import TenantResolver

MAX_EDIT_ATTEMPTS = 50
"""Compare-and-swap attempts before an edit under heavy contention gives up with a conflict."""


def _conflict(file_path: str, why: str) -> EditResult:
    return EditResult(
        error=f"Error: edit conflict on '{file_path}': {why}. Read the file again and redo the edit."
    )


def _backoff(attempt: int) -> float:
    return random.uniform(0, min(0.05, 0.002 * 2**attempt))


class TenantMemoryBackend(StoreBackend):
    """Files of the current tenant only: namespace `(<assistant_id>, [scope...], "memories")`.

    The tenant is resolved on every call from the run (metadata, configurable, context);
    with none, `TenantNotResolved` is raised and nothing is read or written.
    """

    def __init__(
        self,
        *,
        store: PostgresStore | AsyncPostgresStore,
        resolver: TenantResolver | None = None,
        policy: RetentionPolicy | None = None,
    ) -> None:
        if not isinstance(store, (PostgresStore, AsyncPostgresStore)):
            raise TypeError(
                "TenantMemoryBackend needs langgraph's PostgresStore or AsyncPostgresStore "
                f"(got {type(store).__name__}); open one with MemoryService.open()"
            )
        self.resolver = resolver or TenantResolver()
        self.policy = policy or RetentionPolicy()
        super().__init__(namespace=self.resolver.current_namespace, store=store)

    # -- writes with the TTL the retention policy gives -----------------------------------

    def _ttl(self, namespace: tuple[str, ...], key: str) -> float | None:
        """Minutes the item lives after this write (None: forever), per the retention policy."""
        return self.policy.ttl_minutes_for(namespace, key)

    def _written_value(self, existing: Item | None, content: str) -> dict[str, Any]:
        if existing is not None:
            file_data = update_file_data(self._convert_store_item_to_file_data(existing), content)
        else:
            file_data = create_file_data(content)
        file_data["encoding"] = "utf-8"
        return self._convert_file_data_to_store_value(file_data)

    def write(self, file_path: str, content: str) -> WriteResult:
        """`StoreBackend.write`, putting the item with its policy TTL."""
        store = self._get_store()
        namespace = self._get_namespace()
        value = self._written_value(store.get(namespace, file_path), content)
        store.put(namespace, file_path, value, ttl=self._ttl(namespace, file_path))
        return WriteResult(path=file_path)

    async def awrite(self, file_path: str, content: str) -> WriteResult:
        """Async twin of `write`."""
        store = self._get_store()
        namespace = self._get_namespace()
        value = self._written_value(await store.aget(namespace, file_path), content)
        await store.aput(namespace, file_path, value, ttl=self._ttl(namespace, file_path))
        return WriteResult(path=file_path)

    def upload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        """`StoreBackend.upload_files` (binary as base64), each item with its policy TTL."""
        store = self._get_store()
        namespace = self._get_namespace()
        responses: list[FileUploadResponse] = []
        for path, content in files:
            try:
                text, encoding = content.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                text, encoding = base64.standard_b64encode(content).decode("ascii"), "base64"
            value = self._convert_file_data_to_store_value(create_file_data(text, encoding=encoding))
            store.put(namespace, path, value, ttl=self._ttl(namespace, path))
            responses.append(FileUploadResponse(path=path, error=None))
        return responses

    # -- compare-and-swap ---------------------------------------------------------------

    def _swap_params(self, namespace: tuple[str, ...], key: str, old: dict, new: dict) -> dict[str, Any]:
        return {
            "prefix": ".".join(namespace),
            "key": key,
            "old_value": Jsonb(old),
            "new_value": Jsonb(new),
            "ttl_minutes": self._ttl(namespace, key),
        }

    def _swap(self, namespace: tuple[str, ...], key: str, old: dict, new: dict) -> bool:
        store = self._get_store()
        if isinstance(store, AsyncPostgresStore):
            future = asyncio.run_coroutine_threadsafe(self._aswap(namespace, key, old, new), store.loop)
            return future.result()
        params = self._swap_params(namespace, key, old, new)
        shared_connection = isinstance(store.conn, psycopg.Connection)
        with store.lock if shared_connection else nullcontext(), connection(store.conn) as conn:
            return conn.execute(sql.SWAP_ITEM_VALUE, params).rowcount == 1

    async def _aswap(self, namespace: tuple[str, ...], key: str, old: dict, new: dict) -> bool:
        store = self._get_store()
        params = self._swap_params(namespace, key, old, new)
        async with aconnection(store.conn) as conn:
            cursor = await conn.execute(sql.SWAP_ITEM_VALUE, params)
            return cursor.rowcount == 1

    def _next_value(
        self, item: Item | None, file_path: str, old: str, new: str, replace_all: bool, attempt: int
    ) -> tuple[dict, int] | EditResult:
        """The value an edit turns `item` into, or the error to return."""
        if item is None:
            if attempt == 0:
                return EditResult(error=f"Error: File '{file_path}' not found")
            return _conflict(file_path, "another run deleted the file meanwhile")
        try:
            file_data = self._convert_store_item_to_file_data(item)
        except ValueError as exc:
            return EditResult(error=f"Error: {exc}")
        if file_data.get("encoding") == "base64":
            return EditResult(error="Error: Cannot edit binary files with text replacements.")
        replaced = perform_string_replacement(file_data_to_string(file_data), old, new, replace_all)
        if isinstance(replaced, str):
            if attempt == 0:
                return EditResult(error=replaced)
            return _conflict(file_path, "another run changed it and the text to replace no longer applies")
        content, occurrences = replaced
        return self._convert_file_data_to_store_value(update_file_data(file_data, content)), int(occurrences)

    def edit(self, file_path: str, old_string: str, new_string: str, replace_all: bool = False) -> EditResult:  # noqa: FBT001, FBT002
        """Replace text; a concurrent change is retried on the new content, never overwritten."""
        store = self._get_store()
        namespace = self._get_namespace()
        for attempt in range(MAX_EDIT_ATTEMPTS):
            item = store.get(namespace, file_path)
            outcome = self._next_value(item, file_path, old_string, new_string, replace_all, attempt)
            if isinstance(outcome, EditResult):
                return outcome
            value, occurrences = outcome
            if self._swap(namespace, file_path, item.value, value):
                return EditResult(path=file_path, occurrences=occurrences)
            time.sleep(_backoff(attempt))
        return _conflict(file_path, f"it kept changing under {MAX_EDIT_ATTEMPTS} attempts")

    async def aedit(self, file_path: str, old_string: str, new_string: str, replace_all: bool = False) -> EditResult:  # noqa: FBT001, FBT002
        """Async twin of `edit`."""
        store = self._get_store()
        namespace = self._get_namespace()
        for attempt in range(MAX_EDIT_ATTEMPTS):
            item = await store.aget(namespace, file_path)
            outcome = self._next_value(item, file_path, old_string, new_string, replace_all, attempt)
            if isinstance(outcome, EditResult):
                return outcome
            value, occurrences = outcome
            if await self._aswap_any(namespace, file_path, item.value, value):
                return EditResult(path=file_path, occurrences=occurrences)
            await asyncio.sleep(_backoff(attempt))
        return _conflict(file_path, f"it kept changing under {MAX_EDIT_ATTEMPTS} attempts")

    async def _aswap_any(self, namespace: tuple[str, ...], key: str, old: dict, new: dict) -> bool:
        if isinstance(self._get_store(), AsyncPostgresStore):
            return await self._aswap(namespace, key, old, new)
        return await asyncio.to_thread(self._swap, namespace, key, old, new)

    # -- push-down listing: ls / glob / grep run inside PostgreSQL -------------------------

    def _list(self, listing: pushdown.Listing) -> Any:
        store = self._get_store()
        if isinstance(store, AsyncPostgresStore):
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is store.loop:
                raise asyncio.InvalidStateError(
                    "synchronous ls/glob/grep on an AsyncPostgresStore from its own event loop would "
                    "deadlock; use await backend.als/aglob/agrep instead"
                )
            return asyncio.run_coroutine_threadsafe(pushdown.astream(store, listing), store.loop).result()
        return pushdown.stream(store, listing)

    async def _alist(self, listing: pushdown.Listing) -> Any:
        store = self._get_store()
        if isinstance(store, AsyncPostgresStore):
            return await pushdown.astream(store, listing)
        return await asyncio.to_thread(pushdown.stream, store, listing)

    def _ls_listing(self, path: str) -> pushdown.LsListing:
        return pushdown.LsListing(self._get_namespace(), path, self._convert_store_item_to_file_data)

    def _glob_listing(self, pattern: str, path: str | None) -> pushdown.GlobListing:
        return pushdown.GlobListing(self._get_namespace(), pattern, path, self._convert_store_item_to_file_data)

    def _grep_listing(
        self, pattern: str, path: str | None, glob: str | None, max_count: int | None
    ) -> pushdown.GrepListing:
        return pushdown.GrepListing(
            self._get_namespace(), pattern, path, glob, max_count, self._convert_store_item_to_file_data
        )

    def ls(self, path: str) -> LsResult:
        """`StoreBackend.ls`, with the prefix scan and the subdirectory names computed in SQL."""
        return self._list(self._ls_listing(path))

    async def als(self, path: str) -> LsResult:
        """Async twin of `ls`."""
        return await self._alist(self._ls_listing(path))

    def glob(self, pattern: str, path: str | None = None) -> GlobResult:
        """`StoreBackend.glob` on only the rows whose key can match `pattern` under `path`."""
        return self._list(self._glob_listing(pattern, path))

    async def aglob(self, pattern: str, path: str | None = None) -> GlobResult:
        """Async twin of `glob`."""
        return await self._alist(self._glob_listing(pattern, path))

    def grep(
        self, pattern: str, path: str | None = None, glob: str | None = None, *, max_count: int | None = None
    ) -> GrepResult:
        """`StoreBackend.grep` on only the rows whose text content holds `pattern` (a literal)."""
        return self._list(self._grep_listing(pattern, path, glob, max_count))

    async def agrep(
        self, pattern: str, path: str | None = None, glob: str | None = None, *, max_count: int | None = None
    ) -> GrepResult:
        """Async twin of `grep`."""
        return await self._alist(self._grep_listing(pattern, path, glob, max_count))
