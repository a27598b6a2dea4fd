"""The ASGI app of `memory serve`: /health, /ready, /metrics and (unless jobs-only) the Store API.

The lifespan opens the async twin of the service (`MemoryService.aopen`: an async pool and the
official `AsyncPostgresStore` with the same index and TTL config as the agents') on the server's
event loop, and closes it on shutdown.

- `/health`: 200 while the process runs; touches nothing.
- `/ready`: 200 when the database answers on a pooled connection and its schema is at head; 503
  with the reason otherwise. The alembic head is read once at startup; one check runs at a time and
  its answer is reused for `READY_CACHE_S`, so a burst of probes costs one query.
- `/metrics`: Prometheus text (`memory.api.metrics`).

Every request passes `RequestMiddleware` (limits, metrics); then `StoreRoutes` sends the Store
API's exact routes to `StoreApi` directly and everything else to Starlette's router.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
from alembic.script import ScriptDirectory
from langgraph.store.base import InvalidNamespaceError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from jobs import runs
from memory import migrations, quotas, sql
from memory.api import store as store_api
from memory.api.auth import JwtAuth, KeyAuth, authenticator
from memory.api.errors import ApiError, refusal
from memory.api.limits import RequestMiddleware
from memory.api.metrics import ApiMetrics, JobCollector, QuotaCollector
from memory.db import unavailable

logger = logging.getLogger(__name__)

READY_CACHE_S = 1.0
POOL_TIMEOUT_S = 3.0


class ReadyCheck:
    """Database reachable and schema at head, on a pooled connection; single-flight, cached briefly."""

    def __init__(self, pool: AsyncConnectionPool, url: str, head: str, on_check: Callable[[], None]) -> None:
        self.pool = pool
        self.url = url
        self.head = head
        self.on_check = on_check
        self._lock = asyncio.Lock()
        self._answer: tuple[bool, str] | None = None
        self._at = 0.0

    def _fresh(self) -> bool:
        return self._answer is not None and time.monotonic() - self._at < READY_CACHE_S

    async def __call__(self) -> tuple[bool, str]:
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    self._answer = await self._check()
                    self._at = time.monotonic()
        assert self._answer is not None
        return self._answer

    async def _check(self) -> tuple[bool, str]:
        self.on_check()
        try:
            async with self.pool.connection(timeout=POOL_TIMEOUT_S) as conn:
                try:
                    cursor = await conn.execute(sql.API_SCHEMA_REVISION)
                    rows = await cursor.fetchall()
                    revision = ",".join(sorted(row["version_num"] for row in rows)) or None
                except psycopg.errors.UndefinedTable:
                    revision = None
        except (psycopg.Error, PoolTimeout) as exc:
            return False, str(unavailable(self.url, exc))
        state = migrations.SchemaState(revision, self.head)
        if not state.at_head:
            return False, f"schema at {state.label()}, head is {state.head}: run `memory db upgrade`"
        return True, f"ready: database reachable, schema at {state.label()}"


class StoreRoutes:
    """Middleware: the requests `endpoints` names (filled by the lifespan) go straight to their app."""

    def __init__(self, app: ASGIApp, endpoints: dict[tuple[str, str], ASGIApp]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (endpoint := self.endpoints.get((scope["method"], scope["path"]))):
            await endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _detail(status: int, detail: str) -> Response:
    response = Response(orjson.dumps({"detail": detail}), status, media_type="application/json")
    if status == 401:
        response.headers["www-authenticate"] = "x-api-key"
    return response


async def _refused(request: Request, exc: Exception) -> Response:
    refused = refusal(exc, request.method, request.url.path)
    if refused is None:
        raise exc
    return _detail(refused.status, refused.detail)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _detail(404, f"not found: {request.url.path}; try /health, /ready, /metrics or /store/...")
    return _detail(exc.status_code, str(exc.detail))


def create_app(
    svc: Any,
    *,
    job_metrics: Any,
    job_names: list[str],
    api: bool = True,
) -> Starlette:
    """The app for `svc` (a sync `MemoryService`: its settings, URL and pool for /metrics).

    `api=False` (`memory serve --jobs-only`) leaves the Store API out.
    """
    from memory.service import MemoryService

    settings = svc.settings
    registry = CollectorRegistry()
    api_metrics = ApiMetrics(registry)
    if api and settings.api_auth == "jwt":
        JwtAuth.from_settings(settings)  # a missing key file stops `memory serve` before it listens
    head = ScriptDirectory(str(migrations.script_location())).get_current_head() or ""

    def database_facts() -> tuple[dict[str, float], bool]:
        try:
            with svc.pool.connection(timeout=POOL_TIMEOUT_S) as conn:
                return {job: at.timestamp() for job, at in runs.last_successes(conn).items() if at}, True
        except (psycopg.Error, PoolTimeout) as exc:
            logger.warning("metrics: database unavailable: %s", " ".join(str(exc).split()))
            return {}, False

    registry.register(JobCollector(job_metrics, job_names, database_facts))

    def quota_facts() -> list[tuple[str, str]] | None:
        try:
            with svc.pool.connection(timeout=POOL_TIMEOUT_S) as conn:
                return quotas.near_limits_if_enabled(conn)
        except (psycopg.Error, PoolTimeout):
            return None

    registry.register(QuotaCollector(quota_facts, tenant_labels=settings.serve_tenant_labels))
    endpoints: dict[tuple[str, str], ASGIApp] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with MemoryService.aopen(settings, database_url=svc.database_url) as asvc:
            app.state.ready = ReadyCheck(asvc.pool, svc.database_url, head, api_metrics.ready_checks.inc)
            auth = authenticator(settings, asvc.pool, svc.database_url) if api else None
            if auth is not None:
                store = store_api.StoreApi(asvc.store, asvc.policy, auth, max_page=settings.api_max_page)
                app.router.routes.extend(store.routes())
                endpoints.update(dict.fromkeys(store.endpoints, store))
                if isinstance(auth, KeyAuth):
                    await auth.start()
                    api_metrics.watch_key_cache(auth.cache)
            try:
                yield
            finally:
                if isinstance(auth, KeyAuth):
                    await auth.stop()

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def ready(request: Request) -> Response:
        ok, reason = await request.app.state.ready()
        return PlainTextResponse(reason + "\n", status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/health", health), Route("/ready", ready), Route("/metrics", metrics)],
        middleware=[
            Middleware(RequestMiddleware, max_bytes=settings.api_max_body_bytes, observe=api_metrics.observe),
            Middleware(StoreRoutes, endpoints=endpoints),
        ],
        exception_handlers={
            HTTPException: _http_error,
            **dict.fromkeys((ApiError, InvalidNamespaceError, psycopg.Error, PoolTimeout), _refused),
        },
        lifespan=lifespan,
    )


