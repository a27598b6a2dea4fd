"""LangGraph's Postgres stores with a tenant's search served by an index, and async batches that
send every read before waiting for any answer.

`TenantSearch` (both twins): a search whose namespace prefix is one label (a tenant: what every
tenant key's search through the Store API is) says its namespace condition as "the first label is
the tenant" (`sql.STORE_SEARCH_TENANT`, the same rows), which `memory_store_tenant_recent_idx`
serves newest first: a page reads its own rows instead of sorting all of the tenant's items.
Vector searches (ordered by score) keep upstream's condition.

`PipelinedAsyncPostgresStore`: LangGraph's async store gathers the operations of concurrent callers into one batch and runs it
on one pooled connection in pipeline mode, but it waits for each read's rows before sending the
next read: a batch of n gets (one query per namespace) and searches costs n round trips, and each
wait is a trip through the event loop. Here a batch's reads go out on cursors of their own, all
before the first fetch, so their answers come back in one round trip; then the writes follow
exactly as upstream. The queries are upstream's own (`_get_batch_GET_ops_queries`,
`_prepare_batch_search_queries`, `_get_batch_list_namespaces_queries`), in the same order and
the same implicit transaction, so results are what `AsyncPostgresStore` returns.

Its operations stay each caller's own: upstream fails every operation of a batch together (one
transaction, one exception for all), so a write the database refuses for its tenant (a quota)
would roll back the other callers' writes and hand them that tenant's error. Here a batch of
several operations that fails is run again one operation at a time (`_run_batches`): a search
whose filter cannot be said in SQL fails alone (`InvalidSearch`). Upstream runs one batch at a
time; here up to `batches_in_flight` run at once (default one: bigger batches cost less CPU).

Gets (`PlainGets`, both twins) are plain SELECTs; the TTL refresh that upstream puts in every get
statement is sent only for found rows that have a TTL. A batch of one statement (most under light
load) is sent without pipeline mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from langgraph.store.base import (
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)
from langgraph.store.base.batch import _dedupe_ops
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
from langgraph.store.postgres.base import (
    PLACEHOLDER,
    Row,
    _decode_ns_bytes,
    _namespace_to_text,
    _row_to_item,
    _row_to_search_item,
)
from psycopg import AsyncConnection, AsyncCursor, Cursor
from psycopg.rows import DictRow, dict_row

from memory import sql
from memory.errors import MemoryServiceError

Pending = list[tuple[AsyncCursor[DictRow], Callable[[list[Row]], tuple[str, tuple] | None]]]
"""Reads sent, each with what takes its rows (and returns a statement to send next, or None)."""


class TenantSearch:
    """Upstream's search queries, a one-label prefix's condition said as the tenant index's."""

    tenant_index = True
    """Whether `memory_store_tenant_recent_idx` is there (`MemoryService` checks when it opens and
    after `setup()`); without it the searches stay upstream's, which the prefix index serves."""

    def _prepare_batch_search_queries(self, search_ops: Sequence[tuple[int, SearchOp]]) -> tuple[list, list]:
        queries, embedding_requests = super()._prepare_batch_search_queries(search_ops)  # type: ignore[misc]
        if not self.tenant_index:
            return queries, embedding_requests
        scored = {idx for idx, _ in embedding_requests}
        for idx, (_, op) in enumerate(search_ops):
            query, params = queries[idx]
            if (
                len(op.namespace_prefix) == 1
                and "." not in op.namespace_prefix[0]
                and idx not in scored
                and query.count(sql.STORE_SEARCH_NAMESPACE) == 1
                and params[0] == op.namespace_prefix[0]
            ):
                queries[idx] = (query.replace(sql.STORE_SEARCH_NAMESPACE, sql.STORE_SEARCH_TENANT), [params[0], *params[2:]])
        return queries, embedding_requests


@dataclass
class GetRead:
    """One namespace's gets as a plain read; then, for what it found, the TTL refresh (if any)."""

    namespace: tuple[str, ...]
    omit_expired: bool
    wanted: list[tuple[int, str, bool]] = field(default_factory=list)
    """(index in the batch's results, key, refresh_ttl) of each get."""

    def statement(self) -> tuple[str, tuple[str, list[str]]]:
        keys = list(dict.fromkeys(key for _, key, _ in self.wanted))
        return _unexpired(sql.STORE_GET_ITEMS, self.omit_expired), (_namespace_to_text(self.namespace), keys)

    def answer(self, rows: list[Row], results: list[Result], loader: Any) -> tuple[str, tuple] | None:
        """Each get's item (or None) into `results`; the refresh to send next, when a found row
        has a TTL and its get asked for a refresh."""
        by_key = {row["key"]: row for row in rows}
        refresh: dict[str, None] = {}
        for idx, key, refresh_ttl in self.wanted:
            row = by_key.get(key)
            results[idx] = _row_to_item(self.namespace, row, loader=loader) if row else None
            if row and refresh_ttl and row["ttl_minutes"] is not None:
                refresh[key] = None
        if not refresh:
            return None
        return _unexpired(sql.STORE_REFRESH_TTL, self.omit_expired), (_namespace_to_text(self.namespace), list(refresh))


def _unexpired(query: str, omit_expired: bool) -> str:
    return query + sql.STORE_NOT_EXPIRED if omit_expired else query


class PlainGets:
    """Gets said as `GetRead`s: a plain SELECT per namespace (`sql.STORE_GET_ITEMS`), the TTL
    refresh a statement of its own for the found rows that have a TTL. Upstream's get statement
    always holds the refresh UPDATE, which doubles a get's cost in PostgreSQL even when no row has
    a TTL. The items returned and the expiry left behind are upstream's."""

    def _get_reads(self, get_ops: Sequence[tuple[int, GetOp]]) -> list[GetRead]:
        reads: dict[tuple[str, ...], GetRead] = {}
        for idx, op in get_ops:
            read = reads.setdefault(op.namespace, GetRead(op.namespace, self._omit_expired))  # type: ignore[attr-defined]
            read.wanted.append((idx, op.key, op.refresh_ttl))
        return list(reads.values())


class TenantSearchPostgresStore(PlainGets, TenantSearch, PostgresStore):
    """`PostgresStore` with `TenantSearch` and `PlainGets`."""

    def _batch_get_ops(self, get_ops: Sequence[tuple[int, GetOp]], results: list[Result], cur: Cursor[DictRow]) -> None:
        for read in self._get_reads(get_ops):
            cur.execute(*read.statement())
            refresh = read.answer(cast(list[Row], cur.fetchall()), results, self._deserializer)
            if refresh is not None:
                cur.execute(*refresh)


class InvalidSearch(MemoryServiceError, ValueError):
    """A search the store cannot run (a filter with an unknown operator); nothing was read."""


class PipelinedAsyncPostgresStore(PlainGets, TenantSearch, AsyncPostgresStore):
    """`AsyncPostgresStore` with `TenantSearch` and `PlainGets`, one round trip for all the reads of
    a batch, a batch of one statement sent without pipeline mode, `batches_in_flight` batches at
    once, and each caller's answer its own."""

    batches_in_flight: int
    """Batches at the database at once (`[database] batches_in_flight`); operations arriving
    meanwhile gather into the next batch. One, as upstream: measured on two cores with 32 Store API
    clients, bigger batches (fewer transactions and round trips) cost server and PostgreSQL 13%
    less CPU than a batch per tick. More keep callers moving when a batch waits long (embeddings)."""

    def __init__(self, *args: Any, batches_in_flight: int = 1, **kwargs: Any) -> None:
        self.batches_in_flight = batches_in_flight  # before upstream's __init__ starts the batch loop
        super().__init__(*args, **kwargs)

    def _ensure_task(self) -> None:
        """The batch loop is `_run_batches` (upstream's `_run`, each batch a task of its own)."""
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(_run_batches(self._aqueue, weakref.ref(self), self.batches_in_flight))

    async def asearch(
        self,
        namespace_prefix: tuple[str, ...],
        /,
        *,
        query: str | None = None,
        filter: dict[str, Any] | None = None,  # noqa: A002 (upstream's name)
        limit: int = 10,
        offset: int = 0,
        refresh_ttl: bool | None = None,
    ) -> list[SearchItem]:
        """Upstream's search; one whose query cannot be built (a batch of its own by then: see
        `_settle`) raises `InvalidSearch`."""
        try:
            return await super().asearch(
                namespace_prefix, query=query, filter=filter, limit=limit, offset=offset, refresh_ttl=refresh_ttl
            )
        except InvalidNamespaceError:
            raise
        except ValueError as exc:
            raise InvalidSearch(f"cannot search {'.'.join(namespace_prefix) or 'every namespace'}: {exc}") from exc

    async def _execute_batch(
        self,
        grouped_ops: dict,
        results: list[Result],
        conn: AsyncConnection[DictRow] | None = None,
    ) -> None:
        async with self._cursor(pipeline=not self._one_statement(grouped_ops)) as cur:
            pending: Pending = []
            if GetOp in grouped_ops:
                await self._send_gets(cast(Sequence[tuple[int, GetOp]], grouped_ops[GetOp]), results, cur, pending)
            if SearchOp in grouped_ops:
                await self._send_searches(cast(Sequence[tuple[int, SearchOp]], grouped_ops[SearchOp]), results, cur, pending)
            if ListNamespacesOp in grouped_ops:
                list_ops = cast(Sequence[tuple[int, ListNamespacesOp]], grouped_ops[ListNamespacesOp])
                await self._send_list_namespaces(list_ops, results, cur, pending)
            refreshes = []
            try:
                for reader, take in pending:  # the first fetch brings every answer
                    if (refresh := take(cast(list[Row], await reader.fetchall()))) is not None:
                        refreshes.append(refresh)
            finally:
                for reader, _ in pending:
                    await reader.close()
            for refresh in refreshes:
                await cur.execute(*refresh)
            if PutOp in grouped_ops:
                await self._batch_put_ops(cast(Sequence[tuple[int, PutOp]], grouped_ops[PutOp]), cur)

    def _one_statement(self, grouped_ops: dict) -> bool:
        """Whether the batch is one operation said in one statement (as most are under light load):
        that goes without pipeline mode, whose sync and flush cost about a
        third of a get's CPU in the client. A get's refresh, when its row has a TTL, follows as a
        statement of its own; a put that also writes vectors keeps the pipeline's one transaction."""
        ops = [op for group in grouped_ops.values() for _, op in group]
        if len(ops) != 1:
            return False
        op = ops[0]
        return not isinstance(op, PutOp) or op.value is None or not self.index_config or op.index is False

    async def _send(self, cur: AsyncCursor[DictRow], query: str, params: Any, pending: Pending, take: Callable) -> None:
        reader = cur.connection.cursor(binary=True, row_factory=dict_row)
        pending.append((reader, take))
        await reader.execute(query, params)

    async def _send_gets(
        self, get_ops: Sequence[tuple[int, GetOp]], results: list[Result], cur: AsyncCursor[DictRow], pending: Pending
    ) -> None:
        for read in self._get_reads(get_ops):

            def take(rows: list[Row], read: GetRead = read) -> tuple[str, tuple] | None:
                return read.answer(rows, results, self._deserializer)

            await self._send(cur, *read.statement(), pending, take)

    async def _send_searches(
        self, search_ops: Sequence[tuple[int, SearchOp]], results: list[Result], cur: AsyncCursor[DictRow], pending: Pending
    ) -> None:
        queries, embedding_requests = self._prepare_batch_search_queries(search_ops)
        if embedding_requests and self.embeddings:
            vectors = await self.embeddings.aembed_documents([query for _, query in embedding_requests])
            for (idx, _), vector in zip(embedding_requests, vectors, strict=False):
                params = queries[idx][1]
                for i in range(len(params)):
                    if params[i] is PLACEHOLDER:
                        params[i] = vector
        for (idx, _), (query, params) in zip(search_ops, queries, strict=False):

            def take(rows: list[Row], idx: int = idx) -> None:
                results[idx] = [
                    _row_to_search_item(_decode_ns_bytes(row["prefix"]), row, loader=self._deserializer) for row in rows
                ]

            await self._send(cur, query, params, pending, take)

    async def _send_list_namespaces(
        self,
        list_ops: Sequence[tuple[int, ListNamespacesOp]],
        results: list[Result],
        cur: AsyncCursor[DictRow],
        pending: Pending,
    ) -> None:
        queries = self._get_batch_list_namespaces_queries(list_ops)
        for (query, params), (idx, _) in zip(queries, list_ops, strict=False):

            def take(rows: list[Row], idx: int = idx) -> None:
                results[idx] = [_decode_ns_bytes(row["truncated_prefix"]) for row in rows]

            await self._send(cur, query, params, pending, take)


async def _run_batches(
    queue: asyncio.Queue[tuple[asyncio.Future, Op]], store: weakref.ReferenceType[Any], in_flight: int
) -> None:
    """Upstream's batch loop (`langgraph.store.base.batch._run`): the operations queued by the time
    a batch can start make one batch. Two changes: up to `in_flight` batches run at once, each a
    task of its own on its own pooled connection; and a batch of several operations that fails is
    run again one operation at a time, so each caller gets its own answer: one tenant's refused
    write neither rolls back nor reaches the others."""
    running: set[asyncio.Task] = set()
    slots = asyncio.Semaphore(in_flight)
    while True:
        await slots.acquire()
        item = await queue.get()
        if not item:
            break
        if item[0].done():  # cancelled while queued
            slots.release()
            continue
        items = [item]
        with contextlib.suppress(asyncio.QueueEmpty):
            while item := queue.get_nowait():
                if not item[0].done():
                    items.append(item)
        owner = store()
        if owner is None:
            break
        task = asyncio.get_running_loop().create_task(_settle(owner, items))
        running.add(task)
        task.add_done_callback(running.discard)
        task.add_done_callback(lambda _: slots.release())
        del owner


async def _settle(store: Any, items: list[tuple[asyncio.Future, Op]]) -> None:
    """Run one batch and hand each caller its result; a failed batch of several, op by op."""
    futures = [future for future, _ in items]
    try:
        listen, ops = _dedupe_ops([op for _, op in items])
        results = await store.abatch(ops)
        if listen is not None:
            results = [results[ix] for ix in listen]
    except Exception as exc:  # noqa: BLE001 (handed to the callers)
        if len(items) == 1:
            if not futures[0].done():
                futures[0].set_exception(exc)
            return
        # Each again, alone (side by side): a put or delete of the failed batch that was applied
        # already leaves the same when applied again.
        await asyncio.gather(*(_settle(store, [alone]) for alone in items))
        return
    for future, result in zip(futures, results, strict=False):
        if not future.done():
            future.set_result(result)
