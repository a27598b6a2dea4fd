"""`TenantMemoryBackend`: a `StoreBackend` scoped to the run's tenant, with lossless concurrent edits.

What it adds to `StoreBackend`, besides the tenant: the retention policy's TTL on every write;
compare-and-swap edits that re-embed the item in the same statement (stores with an index);
`ls`/`glob`/`grep` pushed down into SQL, refreshing TTLs as `store.search` does; the protocol's
timeouts on `als`/`aglob`/`agrep`; and bad input (NUL, unpaired surrogates, over-long paths) or a
write over a tenant quota returned as a tool error with nothing written, never raised.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from contextlib import nullcontext
from typing import Any

import psycopg

from deepagents.backends import StoreBackend
from deepagents.backends import protocol
from deepagents.backends.protocol import (
    INVALID_PATH,
    DeleteResult,
    EditResult,
    FileDownloadResponse,
    FileUploadResponse,
    GlobResult,
    GrepResult,
    LsResult,
    ReadResult,
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

from memory import pushdown, sql, vectors
from memory.db import aconnection, connection
from memory.paths import content_error, path_error
from memory.quotas import QuotaExceeded
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


def _quota_error(exc: psycopg.Error, path: str) -> str:
    """The tool error for a write the database refused over a quota; any other error is re-raised."""
    refused = QuotaExceeded.from_error(exc)
    if refused is None:
        raise exc
    return refused.tool_error(path)


def _timed_out(tool: str, seconds: float) -> str:
    """`BackendProtocol`'s timeout message (the default `agrep`, the sandbox's `aglob`)."""
    return f"Error: {tool} timed out after {seconds}s. Try a more specific pattern or a narrower path."


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
        if error := path_error(file_path) or content_error(file_path, content):
            return WriteResult(error=error)
        store = self._get_store()
        namespace = self._get_namespace()
        value = self._written_value(store.get(namespace, file_path), content)
        try:
            store.put(namespace, file_path, value, ttl=self._ttl(namespace, file_path))
        except psycopg.Error as exc:
            return WriteResult(error=_quota_error(exc, file_path))
        return WriteResult(path=file_path)

    async def awrite(self, file_path: str, content: str) -> WriteResult:
        """Async twin of `write`."""
        if error := path_error(file_path) or content_error(file_path, content):
            return WriteResult(error=error)
        store = self._get_store()
        namespace = self._get_namespace()
        value = self._written_value(await store.aget(namespace, file_path), content)
        try:
            await store.aput(namespace, file_path, value, ttl=self._ttl(namespace, file_path))
        except psycopg.Error as exc:
            return WriteResult(error=_quota_error(exc, file_path))
        return WriteResult(path=file_path)

    def _upload_value(self, path: str, content: bytes) -> dict[str, Any]:
        """`StoreBackend.upload_files`' value: UTF-8 text as is, anything else (NUL included,
        which PostgreSQL text cannot hold) as base64."""
        try:
            text, encoding = content.decode("utf-8"), "utf-8"
            if "\x00" in text:
                raise UnicodeDecodeError("utf-8", content, 0, 1, "NUL")
        except UnicodeDecodeError:
            text, encoding = base64.standard_b64encode(content).decode("ascii"), "base64"
        return self._convert_file_data_to_store_value(create_file_data(text, encoding=encoding))

    def upload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        """`StoreBackend.upload_files` (binary as base64), each item with its policy TTL."""
        store = self._get_store()
        namespace = self._get_namespace()
        responses: list[FileUploadResponse] = []
        for path, content in files:
            if path_error(path):
                responses.append(FileUploadResponse(path=path, error=INVALID_PATH))
                continue
            try:
                store.put(namespace, path, self._upload_value(path, content), ttl=self._ttl(namespace, path))
            except psycopg.Error as exc:
                responses.append(FileUploadResponse(path=path, error=_quota_error(exc, path)))
                continue
            responses.append(FileUploadResponse(path=path, error=None))
        return responses

    async def aupload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        """Async twin of `upload_files`."""
        store = self._get_store()
        namespace = self._get_namespace()
        responses: list[FileUploadResponse] = []
        for path, content in files:
            if path_error(path):
                responses.append(FileUploadResponse(path=path, error=INVALID_PATH))
                continue
            try:
                await store.aput(namespace, path, self._upload_value(path, content), ttl=self._ttl(namespace, path))
            except psycopg.Error as exc:
                responses.append(FileUploadResponse(path=path, error=_quota_error(exc, path)))
                continue
            responses.append(FileUploadResponse(path=path, error=None))
        return responses

    # -- reads and deletes refuse paths the store cannot hold -------------------------------

    def read(self, file_path: str, offset: int = 0, limit: int = 2000) -> ReadResult:
        """`StoreBackend.read`; a path the store cannot hold is an error, not a database exception."""
        if error := path_error(file_path):
            return ReadResult(error=error.removeprefix("Error: "))  # the tool adds it to read errors
        return super().read(file_path, offset, limit)

    async def aread(self, file_path: str, offset: int = 0, limit: int = 2000) -> ReadResult:
        """Async twin of `read`."""
        if error := path_error(file_path):
            return ReadResult(error=error.removeprefix("Error: "))  # the tool adds it to read errors
        return await super().aread(file_path, offset, limit)

    def delete(self, file_path: str) -> DeleteResult:
        """`StoreBackend.delete`, refusing paths the store cannot hold."""
        if error := path_error(file_path):
            return DeleteResult(error=error)
        return super().delete(file_path)

    async def adelete(self, file_path: str) -> DeleteResult:
        """Async twin of `delete`."""
        if error := path_error(file_path):
            return DeleteResult(error=error)
        return await super().adelete(file_path)

    def download_files(self, paths: list[str]) -> list[FileDownloadResponse]:
        """`StoreBackend.download_files`; a path the store cannot hold is `invalid_path`."""
        valid = [path for path in paths if not path_error(path)]
        found = iter(super().download_files(valid) if valid else [])
        return [
            FileDownloadResponse(path=path, content=None, error=INVALID_PATH) if path_error(path) else next(found)
            for path in paths
        ]

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
        """Swap `old` for `new` when the row still holds `old`; with an index, the item's vectors
        become the new value's in the same statement (embedded before it, outside any lock)."""
        store = self._get_store()
        if isinstance(store, AsyncPostgresStore):
            future = asyncio.run_coroutine_threadsafe(self._aswap(namespace, key, old, new), store.loop)
            return future.result()
        params = self._swap_params(namespace, key, old, new)
        if store.index_config:
            params |= vectors.embed_value(store, new)
        shared_connection = isinstance(store.conn, psycopg.Connection)
        with store.lock if shared_connection else nullcontext(), connection(store.conn) as conn:
            if store.index_config:
                return conn.execute(sql.SWAP_ITEM_VALUE_AND_VECTORS, params).fetchone()["swapped"] == 1
            return conn.execute(sql.SWAP_ITEM_VALUE, params).rowcount == 1

    async def _aswap(self, namespace: tuple[str, ...], key: str, old: dict, new: dict) -> bool:
        store = self._get_store()
        params = self._swap_params(namespace, key, old, new)
        if store.index_config:
            params |= await vectors.aembed_value(store, new)
        async with aconnection(store.conn) as conn:
            if store.index_config:
                cursor = await conn.execute(sql.SWAP_ITEM_VALUE_AND_VECTORS, params)
                return (await cursor.fetchone())["swapped"] == 1
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
        if error := path_error(file_path) or content_error(file_path, new_string):
            return EditResult(error=error)
        store = self._get_store()
        namespace = self._get_namespace()
        for attempt in range(MAX_EDIT_ATTEMPTS):
            item = store.get(namespace, file_path)
            outcome = self._next_value(item, file_path, old_string, new_string, replace_all, attempt)
            if isinstance(outcome, EditResult):
                return outcome
            value, occurrences = outcome
            try:
                swapped = self._swap(namespace, file_path, item.value, value)
            except psycopg.Error as exc:
                return EditResult(error=_quota_error(exc, file_path))
            if swapped:
                return EditResult(path=file_path, occurrences=occurrences)
            time.sleep(_backoff(attempt))
        return _conflict(file_path, f"it kept changing under {MAX_EDIT_ATTEMPTS} attempts")

    async def aedit(self, file_path: str, old_string: str, new_string: str, replace_all: bool = False) -> EditResult:  # noqa: FBT001, FBT002
        """Async twin of `edit`."""
        if error := path_error(file_path) or content_error(file_path, new_string):
            return EditResult(error=error)
        store = self._get_store()
        namespace = self._get_namespace()
        for attempt in range(MAX_EDIT_ATTEMPTS):
            item = await store.aget(namespace, file_path)
            outcome = self._next_value(item, file_path, old_string, new_string, replace_all, attempt)
            if isinstance(outcome, EditResult):
                return outcome
            value, occurrences = outcome
            try:
                swapped = await self._aswap_any(namespace, file_path, item.value, value)
            except psycopg.Error as exc:
                return EditResult(error=_quota_error(exc, file_path))
            if swapped:
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
        """Async twin of `ls`, bounded like `aglob` (the protocol's `ASYNC_GLOB_TIMEOUT`)."""
        timeout = protocol.ASYNC_GLOB_TIMEOUT
        try:
            return await asyncio.wait_for(self._alist(self._ls_listing(path)), timeout)
        except TimeoutError:
            return LsResult(error=_timed_out("ls", timeout))

    def glob(self, pattern: str, path: str | None = None) -> GlobResult:
        """`StoreBackend.glob` on only the rows whose key can match `pattern` under `path`."""
        return self._list(self._glob_listing(pattern, path))

    async def aglob(self, pattern: str, path: str | None = None) -> GlobResult:
        """Async twin of `glob`, bounded by the protocol's `ASYNC_GLOB_TIMEOUT` (the sandbox's message)."""
        timeout = protocol.ASYNC_GLOB_TIMEOUT
        try:
            return await asyncio.wait_for(self._alist(self._glob_listing(pattern, path)), timeout)
        except TimeoutError:
            return GlobResult(error=_timed_out("glob", timeout))

    def grep(
        self, pattern: str, path: str | None = None, glob: str | None = None, *, max_count: int | None = None
    ) -> GrepResult:
        """`StoreBackend.grep` on only the rows whose text content holds `pattern` (a literal)."""
        return self._list(self._grep_listing(pattern, path, glob, max_count))

    async def agrep(
        self, pattern: str, path: str | None = None, glob: str | None = None, *, max_count: int | None = None
    ) -> GrepResult:
        """Async twin of `grep`, bounded by the protocol's `ASYNC_GREP_TIMEOUT` (the default `agrep`'s message)."""
        timeout = protocol.ASYNC_GREP_TIMEOUT
        try:
            return await asyncio.wait_for(self._alist(self._grep_listing(pattern, path, glob, max_count)), timeout)
        except TimeoutError:
            return GrepResult(error=_timed_out("grep", timeout))
