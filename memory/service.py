"""`MemoryService`: one object holding the pool, the official store and saver, and the backends."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from langgraph.store.postgres import AsyncPostgresStore, PostgresStore

from memory import migrations, quotas, sql, usage
from memory.db import aconnection, aopen_pool, connection, db_errors, open_pool
from memory.embedded import EmbeddedPostgres
from memory.errors import MemoryServiceError
from memory.pgstore import PipelinedAsyncPostgresStore, TenantSearchPostgresStore
from memory.prompt import with_memory_conventions
from memory.saver import AsyncTenantPostgresSaver, TenantPostgresSaver
from memory.settings import MemorySettings
from memory.tenancy import TenantResolver
from memory.vectors import embed_value, index_config

if TYPE_CHECKING:  # deepagents (and memory.backend on it) load on first use: the CLI's commands never need them
    from deepagents.backends import CompositeBackend
    from deepagents.backends.protocol import BackendProtocol

    from memory.backend import TenantMemoryBackend

MEMORY_ROUTE = "/memories/"


class ServiceModeError(MemoryServiceError):
    """A sync method was called on an async service (or the reverse)."""


def _settings(settings: MemorySettings | None, overrides: dict[str, Any]) -> MemorySettings:
    if settings is None:
        return MemorySettings.load(**overrides)
    if overrides:
        return MemorySettings.load(**{**settings.model_dump(), **overrides})
    return settings


def _database_url(settings: MemorySettings) -> tuple[str, EmbeddedPostgres | None]:
    """The configured URL (or a started embedded server's), its search_path set to `[database] schema`."""
    if settings.database_url:
        return migrations.schema_url(settings.database_url, settings.database_schema), None
    server = EmbeddedPostgres(settings.data_dir)
    return migrations.schema_url(server.start(), settings.database_schema), server


def _ttl(settings: MemorySettings) -> dict[str, Any]:
    """The store's TTL config from `[retention]`: expired rows never read, never revived by a read."""
    return settings.retention_policy().store_ttl_config()


def _held(settings: MemorySettings) -> frozenset[str]:
    """Tenants under `[retention] legal_hold`: the saver never deletes their threads."""
    return frozenset(settings.retention_legal_hold)


def _index(settings: MemorySettings):
    """The store's vector index config from `[index]`, None when `dims = 0`."""
    return index_config(settings.index_dims, settings.index_embed, settings.index_fields)


def _apply_quotas(url: str, settings: MemorySettings) -> None:
    """`[quota]` into the database's quota table (a no-op when it already holds them)."""
    import psycopg

    from memory.db import pool_kwargs

    with psycopg.connect(url, **pool_kwargs(settings.database_prepare_threshold)) as conn:
        quotas.apply_policy(conn, settings.quota_policy())


def _tenant_index_on(conn: Any) -> bool:
    """Whether the tenant search index is there and valid (else searches keep upstream's query)."""
    return bool(conn.execute(sql.STORE_TENANT_INDEX_READY).fetchone()["ready"])


def _tenant_index_ready(url: str, settings: MemorySettings) -> bool:
    """`_tenant_index_on` a connection of its own (for async callers, in a worker thread)."""
    import psycopg

    from memory.db import pool_kwargs

    with psycopg.connect(url, **pool_kwargs(settings.database_prepare_threshold)) as conn:
        return _tenant_index_on(conn)


class MemoryService:
    """Use `MemoryService.open()` (sync) or `MemoryService.aopen()` (async); both are context managers."""

    def __init__(
        self,
        settings: MemorySettings,
        database_url: str,
        pool: Any,
        store: PostgresStore | AsyncPostgresStore,
        checkpointer: TenantPostgresSaver | AsyncTenantPostgresSaver,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.pool = pool
        self.store = store
        self.checkpointer = checkpointer
        self.resolver = TenantResolver(settings.namespace_scope, settings.namespace_suffix)
        self.policy = settings.retention_policy()

    @classmethod
    @contextmanager
    def open(cls, settings: MemorySettings | None = None, **overrides: Any) -> Iterator[MemoryService]:
        """Settings from config/memory.toml and MEMORY_*; `overrides` are settings fields."""
        settings = _settings(settings, overrides)
        url, embedded = _database_url(settings)
        try:
            with open_pool(
                url,
                settings.database_pool_min_size,
                settings.database_pool_max_size,
                prepare_threshold=settings.database_prepare_threshold,
            ) as pool:
                with connection(pool) as conn:
                    quotas.apply_policy(conn, settings.quota_policy())
                    tenant_index = _tenant_index_on(conn)
                store = TenantSearchPostgresStore(pool, index=_index(settings), ttl=_ttl(settings))
                store.tenant_index = tenant_index
                yield cls(settings, url, pool, store, TenantPostgresSaver(pool, legal_hold=_held(settings)))
        finally:
            if embedded is not None:
                embedded.stop()

    @classmethod
    @asynccontextmanager
    async def aopen(cls, settings: MemorySettings | None = None, **overrides: Any) -> AsyncIterator[MemoryService]:
        """Async twin of `open`: `AsyncPostgresStore` and `AsyncPostgresSaver` on an async pool."""
        settings = _settings(settings, overrides)
        url, embedded = await asyncio.to_thread(_database_url, settings)  # an embedded start blocks
        try:
            pool = await aopen_pool(
                url,
                settings.database_pool_min_size,
                settings.database_pool_max_size,
                prepare_threshold=settings.database_prepare_threshold,
            )
            async with pool:
                await asyncio.to_thread(_apply_quotas, url, settings)
                tenant_index = await asyncio.to_thread(_tenant_index_ready, url, settings)
                store = PipelinedAsyncPostgresStore(
                    pool, index=_index(settings), ttl=_ttl(settings), batches_in_flight=settings.database_batches_in_flight
                )
                store.tenant_index = tenant_index
                yield cls(settings, url, pool, store, AsyncTenantPostgresSaver(pool, legal_hold=_held(settings)))
        finally:
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)

    # -- schema ---------------------------------------------------------------------------

    def setup(self) -> migrations.SchemaState:
        """Upgrade the schema to head: our tables (alembic), LangGraph's (their setup()), indexes;
        then the `[quota]` limits into the database."""
        state = migrations.upgrade(
            self.database_url,
            schema=self.settings.database_schema,
            index=self.store.index_config,
            prepare_threshold=self.settings.database_prepare_threshold,
        )
        _apply_quotas(self.database_url, self.settings)
        self.store.tenant_index = _tenant_index_ready(self.database_url, self.settings)
        return state

    async def asetup(self) -> migrations.SchemaState:
        """`setup()` in a worker thread (alembic is synchronous)."""
        return await asyncio.to_thread(self.setup)

    # -- agent wiring ---------------------------------------------------------------------

    def memory_backend(self) -> TenantMemoryBackend:
        """The bare tenant backend (keys without the `/memories` prefix)."""
        from memory.backend import TenantMemoryBackend

        return TenantMemoryBackend(store=self.store, resolver=self.resolver, policy=self.policy)

    def backend(self, default: BackendProtocol | None = None) -> CompositeBackend:
        """`default` (a `StateBackend` when None) with `/memories/` routed to the tenant backend."""
        from deepagents.backends import CompositeBackend, StateBackend

        return CompositeBackend(default=default or StateBackend(), routes={MEMORY_ROUTE: self.memory_backend()})

    def system_prompt(self, base: str | None = None) -> str:
        return with_memory_conventions(base, self.settings.prompt_conventions or None)

    def embedder(self) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """Embeds an item value with the store's own index (its vector parameters); None without `[index]`."""
        if not getattr(self.store, "index_config", None):
            return None
        return functools.partial(embed_value, self.store)

    # -- inventory ------------------------------------------------------------------------

    def memory_usage(self) -> list[usage.TenantUsage]:
        """Files and content bytes of memory per tenant (on a service from `open()`)."""
        if not isinstance(self.store, PostgresStore):
            raise ServiceModeError("memory_usage() needs MemoryService.open(); under aopen() use `await svc.amemory_usage()`")
        with db_errors("memory usage"), connection(self.pool) as conn:
            return usage.memory_usage(conn, self.settings.namespace_suffix)

    async def amemory_usage(self) -> list[usage.TenantUsage]:
        """Async twin of `memory_usage` (on a service from `aopen()`)."""
        if not isinstance(self.store, AsyncPostgresStore):
            raise ServiceModeError("amemory_usage() needs MemoryService.aopen(); under open() use `svc.memory_usage()`")
        with db_errors("memory usage"):
            async with aconnection(self.pool) as conn:
                return await usage.amemory_usage(conn, self.settings.namespace_suffix)
