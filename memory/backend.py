"""`TenantMemoryBackend`: a `StoreBackend` scoped to the run's tenant, with lossless concurrent edits."""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import nullcontext
from typing import Any

import psycopg

from deepagents.backends import StoreBackend
from deepagents.backends.protocol import EditResult
from deepagents.backends.utils import file_data_to_string, perform_string_replacement, update_file_data
from langgraph.store.base import Item
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
from psycopg.types.json import Jsonb

from memory import sql
from memory.db import aconnection, connection
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
    ) -> None:
        if not isinstance(store, (PostgresStore, AsyncPostgresStore)):
            raise TypeError(
                "TenantMemoryBackend needs langgraph's PostgresStore or AsyncPostgresStore "
                f"(got {type(store).__name__}); open one with MemoryService.open()"
            )
        self.resolver = resolver or TenantResolver()
        super().__init__(namespace=self.resolver.current_namespace, store=store)

    # -- compare-and-swap ---------------------------------------------------------------

    def _swap_params(self, namespace: tuple[str, ...], key: str, old: dict, new: dict) -> dict[str, Any]:
        return {
            "prefix": ".".join(namespace),
            "key": key,
            "old_value": Jsonb(old),
            "new_value": Jsonb(new),
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
