"""Connections: pools for the service, one place that turns driver errors into ours."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from memory.errors import DatabaseUnavailable

CONNECTION_KWARGS: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
"""What LangGraph's PostgresStore and PostgresSaver expect of every connection."""

CONNECT_TIMEOUT_S = 10


def describe_url(url: str) -> str:
    """`host:port/dbname` of a URL, without the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    host = info.get("host") or "localhost"
    where = host if host.startswith("/") else f"{host}:{info.get('port') or 5432}"
    return f"{where}/{info.get('dbname', '')}"


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(dbname), parts.query, parts.fragment))


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return DatabaseUnavailable(
        f"cannot connect to PostgreSQL at {describe_url(url)}: {reason}; "
        "check MEMORY_DATABASE_URL (or leave it empty for the embedded server)"
    )


def check_reachable(url: str) -> None:
    """Fail fast with one clear line when the server cannot be reached."""
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S):
            pass
    except psycopg.Error as exc:
        raise unavailable(url, exc) from exc


def pool_kwargs(prepare_threshold: int | None = 0) -> dict[str, Any]:
    """CONNECTION_KWARGS with `[database] prepare_threshold` (None: no prepared statements, for PgBouncer)."""
    return {**CONNECTION_KWARGS, "prepare_threshold": prepare_threshold}


def open_pool(url: str, min_size: int = 1, max_size: int = 20, *, prepare_threshold: int | None = 0) -> ConnectionPool:
    check_reachable(url)
    pool = ConnectionPool(url, min_size=min_size, max_size=max_size, kwargs=pool_kwargs(prepare_threshold), open=False)
    pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    return pool


async def aopen_pool(
    url: str, min_size: int = 1, max_size: int = 20, *, prepare_threshold: int | None = 0
) -> AsyncConnectionPool:
    check_reachable(url)
    pool = AsyncConnectionPool(
        url, min_size=min_size, max_size=max_size, kwargs=pool_kwargs(prepare_threshold), open=False
    )
    await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    return pool


@contextmanager
def connection(conn: psycopg.Connection | ConnectionPool) -> Iterator[psycopg.Connection]:
    """A connection from a pool, or the connection itself."""
    if isinstance(conn, ConnectionPool):
        with conn.connection() as held:
            yield held
    else:
        yield conn


@asynccontextmanager
async def aconnection(conn: psycopg.AsyncConnection | AsyncConnectionPool) -> AsyncIterator[psycopg.AsyncConnection]:
    if isinstance(conn, AsyncConnectionPool):
        async with conn.connection() as held:
            yield held
    else:
        yield conn
