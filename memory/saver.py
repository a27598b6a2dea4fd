"""The tenant-aware checkpointer: LangGraph's `PostgresSaver` that keeps each thread to its tenant.

The tenant of a call is resolved like the memory backend's (metadata, configurable, the runtime
context; then the ambient run or `bind_tenant`); with none, `TenantNotResolved` and nothing is read
or written. A thread is claimed for its tenant on its first write (`memory.ownership`); reading,
listing, writing, pruning or deleting another tenant's thread raises `ThreadAccessDenied`.
Everything else (DeltaChannel history, interrupts, subgraphs) is the official saver's own code.

Ownership costs no extra round trip on the hot path: `put`/`put_writes` queue the claim
(`memory_claim_thread`) and `get_tuple`/`get_delta_channel_history` the check (`memory_check_thread`)
in front of the official statements, in the same pipeline (or transaction): both raise SQLSTATE
MT001 for another tenant's thread, and then the official statements do not run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata, CheckpointTuple
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from memory import ownership, sql
from memory.errors import LegalHoldError
from memory.tenancy import resolve_run_tenant


_PENDING: ContextVar[tuple[str, dict[str, str]] | None] = ContextVar("memory_thread_pending", default=None)
"""The ownership statement (claim for writes, check for reads) and its parameters that the next
cursor of the official code runs first, in the same pipeline: set around the official method."""


def _thread(config: Mapping[str, Any] | None) -> str | None:
    thread_id = ((config or {}).get("configurable") or {}).get("thread_id")
    return None if thread_id is None else str(thread_id)


class _TenantScope:
    """What both savers share: resolving the tenant, scoping `list`, stamping metadata, legal hold."""

    legal_hold: frozenset[str] = frozenset()

    def _tenant(self, config: Mapping[str, Any] | None) -> str:
        return resolve_run_tenant(config)

    @staticmethod
    def _queue(statement: str, config: RunnableConfig, tenant: str):
        """Queue `statement` (claim or check) of `config`'s thread for the next cursor; the token."""
        return _PENDING.set((statement, {"thread_id": _thread(config), "tenant": tenant}))

    @staticmethod
    def _refused(exc: psycopg.Error, config: RunnableConfig) -> None:
        """Raise a refused claim or check as `ThreadAccessDenied`; any other driver error stays."""
        denied = ownership.refusal(exc, _thread(config))
        if denied is not None:
            raise denied from exc

    def _deletable(self, tenant: str) -> str:
        if tenant in self.legal_hold:
            raise LegalHoldError(
                f"tenant {tenant!r} is under legal hold ([retention] legal_hold); its threads cannot be deleted "
                "or pruned until the hold is lifted (remove it from legal_hold); nothing was deleted"
            )
        return tenant

    def _search_where(self, config: RunnableConfig | None, filter: Any, before: RunnableConfig | None = None):
        """The official predicates, plus: only threads the tenant owns (every list, with or without a thread)."""
        where, args = super()._search_where(config, filter, before)  # type: ignore[misc]
        scope = sql.OWNERSHIP_LIST_SCOPE
        where = f"{where} AND {scope}" if where else f"WHERE {scope}"
        return where, [*args, self._tenant(config)]

    @staticmethod
    def _scoped(found: CheckpointTuple | None, tenant: str) -> CheckpointTuple | None:
        """A loaded checkpoint whose configs name its tenant, so that calls made with them (LangGraph's
        DeltaChannel replay in `get_state`, a resume from `snapshot.config`) resolve the same tenant."""
        if found is None:
            return None

        def named(config: RunnableConfig | None) -> RunnableConfig | None:
            if config is None:
                return None
            return {**config, "metadata": {**(config.get("metadata") or {}), "assistant_id": tenant}}

        return found._replace(config=named(found.config), parent_config=named(found.parent_config))

    @staticmethod
    def _stamped(metadata: CheckpointMetadata, tenant: str) -> CheckpointMetadata:
        """The checkpoint's metadata naming its tenant (a context-resolved run's would not)."""
        if metadata.get("assistant_id") == tenant:
            return metadata
        return {**metadata, "assistant_id": tenant}


class TenantPostgresSaver(_TenantScope, PostgresSaver):
    """`PostgresSaver` whose threads belong to tenants; `legal_hold` tenants' threads are never deleted."""

    def __init__(self, conn: Any, *, legal_hold: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(conn, **kwargs)
        self.legal_hold = frozenset(legal_hold)

    def _owns(self, thread_id: str, tenant: str) -> bool:
        with self._cursor() as cur:
            return ownership.check(cur, thread_id, tenant)

    @contextmanager
    def _cursor(self, *, pipeline: bool = False) -> Iterator[Any]:
        """The official cursor; with an ownership statement pending, a pipelined one that runs it
        first: the official statements run only when it holds, and cost no extra round trip."""
        pending = _PENDING.get()
        with super()._cursor(pipeline=pipeline or pending is not None) as cur:
            if pending is not None:
                cur.execute(*pending)
            yield cur

    def _guarded(self, statement: str, config: RunnableConfig, tenant: str, call):
        """`call()` (the official method) with `statement` queued in front of its statements."""
        token = self._queue(statement, config, tenant)
        try:
            return call()
        except psycopg.Error as exc:
            self._refused(exc, config)
            raise
        finally:
            _PENDING.reset(token)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        tenant = self._tenant(config)
        found = self._guarded(sql.OWNERSHIP_CHECK_OR_RAISE, config, tenant, lambda: super(TenantPostgresSaver, self).get_tuple(config))
        return self._scoped(found, tenant)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        tenant = self._tenant(config)
        thread_id = _thread(config)
        if thread_id is not None and not self._owns(thread_id, tenant):
            return iter(())
        return (self._scoped(found, tenant) for found in super().list(config, filter=filter, before=before, limit=limit))

    def put(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions
    ) -> RunnableConfig:
        tenant = self._tenant(config)
        stamped = self._stamped(metadata, tenant)
        put = lambda: super(TenantPostgresSaver, self).put(config, checkpoint, stamped, new_versions)  # noqa: E731
        return self._guarded(sql.OWNERSHIP_CLAIM_OR_RAISE, config, tenant, put)

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = "") -> None:
        write = lambda: super(TenantPostgresSaver, self).put_writes(config, writes, task_id, task_path)  # noqa: E731
        self._guarded(sql.OWNERSHIP_CLAIM_OR_RAISE, config, self._tenant(config), write)

    def delete_thread(self, thread_id: str) -> None:
        """Delete one of the current tenant's threads (checkpoints, blobs, writes and its owner row)."""
        thread_id = str(thread_id)
        if self._owns(thread_id, self._deletable(self._tenant(None))):
            with self._cursor() as cur:
                cur.execute(sql.OWNERSHIP_DELETE_THREAD, {"thread_id": thread_id})

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        tenant = self._deletable(self._tenant(None))
        if isinstance(thread_ids, str):
            raise TypeError("thread_ids must be a sequence of thread IDs, not a str")
        owned = [str(t) for t in thread_ids if self._owns(str(t), tenant)]
        super().prune(owned, strategy=strategy)

    def get_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]):
        history = lambda: super(TenantPostgresSaver, self).get_delta_channel_history(config=config, channels=channels)  # noqa: E731
        return self._guarded(sql.OWNERSHIP_CHECK_OR_RAISE, config, self._tenant(config), history)


class AsyncTenantPostgresSaver(_TenantScope, AsyncPostgresSaver):
    """Async twin of `TenantPostgresSaver` (its sync methods run these on the saver's loop)."""

    def __init__(self, conn: Any, *, legal_hold: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(conn, **kwargs)
        self.legal_hold = frozenset(legal_hold)

    async def _owns(self, thread_id: str, tenant: str) -> bool:
        async with self._cursor() as cur:
            return await ownership.acheck(cur, thread_id, tenant)

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[Any]:
        """Async twin of `TenantPostgresSaver._cursor`."""
        pending = _PENDING.get()
        async with super()._cursor(pipeline=pipeline or pending is not None) as cur:
            if pending is not None:
                await cur.execute(*pending)
            yield cur

    async def _guarded(self, statement: str, config: RunnableConfig, tenant: str, call):
        """Async twin of `TenantPostgresSaver._guarded`."""
        token = self._queue(statement, config, tenant)
        try:
            return await call()
        except psycopg.Error as exc:
            self._refused(exc, config)
            raise
        finally:
            _PENDING.reset(token)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        tenant = self._tenant(config)
        get = lambda: super(AsyncTenantPostgresSaver, self).aget_tuple(config)  # noqa: E731
        return self._scoped(await self._guarded(sql.OWNERSHIP_CHECK_OR_RAISE, config, tenant, get), tenant)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        tenant = self._tenant(config)
        thread_id = _thread(config)
        if thread_id is not None and not await self._owns(thread_id, tenant):
            return
        async for found in super().alist(config, filter=filter, before=before, limit=limit):
            yield self._scoped(found, tenant)

    async def aput(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions
    ) -> RunnableConfig:
        tenant = self._tenant(config)
        stamped = self._stamped(metadata, tenant)
        put = lambda: super(AsyncTenantPostgresSaver, self).aput(config, checkpoint, stamped, new_versions)  # noqa: E731
        return await self._guarded(sql.OWNERSHIP_CLAIM_OR_RAISE, config, tenant, put)

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        write = lambda: super(AsyncTenantPostgresSaver, self).aput_writes(config, writes, task_id, task_path)  # noqa: E731
        await self._guarded(sql.OWNERSHIP_CLAIM_OR_RAISE, config, self._tenant(config), write)

    async def adelete_thread(self, thread_id: str) -> None:
        """Async twin of `TenantPostgresSaver.delete_thread`."""
        thread_id = str(thread_id)
        if await self._owns(thread_id, self._deletable(self._tenant(None))):
            async with self._cursor() as cur:
                await cur.execute(sql.OWNERSHIP_DELETE_THREAD, {"thread_id": thread_id})

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        tenant = self._deletable(self._tenant(None))
        if isinstance(thread_ids, str):
            raise TypeError("thread_ids must be a sequence of thread IDs, not a str")
        owned = [str(t) for t in thread_ids if await self._owns(str(t), tenant)]
        await super().aprune(owned, strategy=strategy)

    async def aget_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]):
        history = lambda: super(AsyncTenantPostgresSaver, self).aget_delta_channel_history(config=config, channels=channels)  # noqa: E731
        return await self._guarded(sql.OWNERSHIP_CHECK_OR_RAISE, config, self._tenant(config), history)
