"""Connections: pools for the service, and the one place that turns driver errors into ours.

`translate(exc)` maps a psycopg / pool error to a `MemoryServiceError` (a missing table says to
run `memory db upgrade`, a lost server says which one); `db_errors` applies it to a block or a
function. Library entry points use it, and the CLI's error boundary routes what escapes through it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import ContextDecorator, asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from memory.errors import DatabaseError, DatabaseUnavailable, MemoryServiceError, SchemaMissing

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


MISSING_SCHEMA = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.InvalidSchemaName,
)
"""What a database not (fully) migrated answers."""


def one_line(exc: BaseException) -> str:
    """The error on one line: a server error's primary message (no `LINE 2: ...` context)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return " ".join((primary or str(exc)).split()) or type(exc).__name__


def translate(exc: BaseException, doing: str = "") -> MemoryServiceError:
    """Our exception for a driver or pool error (ours are returned as they are); `doing` prefixes the line."""
    from psycopg_pool import PoolTimeout

    if isinstance(exc, MemoryServiceError):
        return exc
    prefix = f"{doing}: " if doing else ""
    if isinstance(exc, MISSING_SCHEMA):
        return SchemaMissing(f"{prefix}{one_line(exc)}; the schema is missing or old: run `memory db upgrade` first")
    if isinstance(exc, (psycopg.OperationalError, PoolTimeout)) and not isinstance(exc, psycopg.errors.QueryCanceled):
        return DatabaseUnavailable(f"{prefix}the database connection failed: {one_line(exc)}")
    return DatabaseError(f"{prefix}database error: {one_line(exc)}")


class db_errors(ContextDecorator):  # noqa: N801 - used like contextlib's lower-case helpers
    """`with db_errors("export acme"):` or `@db_errors()`: driver errors leave as `translate(exc)`."""

    def __init__(self, doing: str = "") -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> None:
        from psycopg_pool import PoolTimeout

        if isinstance(exc, (psycopg.Error, PoolTimeout)):
            raise translate(exc, self.doing) from exc


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


async def acheck_reachable(url: str) -> None:
    """Async twin of `check_reachable` (never blocks the event loop)."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        raise unavailable(url, exc) from exc
    await conn.close()


async def aopen_pool(
    url: str, min_size: int = 1, max_size: int = 20, *, prepare_threshold: int | None = 0
) -> AsyncConnectionPool:
    await acheck_reachable(url)
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
