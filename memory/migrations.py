"""The schema in one step: alembic for our tables, LangGraph's own `setup()` for theirs.

`upgrade(url)` brings a database to head: it creates the configured schema when missing, runs the
alembic revisions under `alembic/` (the first one calls `PostgresStore.setup()` and
`PostgresSaver.setup()` on an autocommit connection and adds the indexes the retention jobs use),
then runs LangGraph's `setup()` again so that a newer langgraph release's migrations, or a vector
index switched on later, are applied too. Running it twice changes nothing.

Where the scripts live: the repository's top-level `alembic/` directory. A wheel ships the same
files as `memory/_alembic/` (see `[tool.setuptools.package-dir]` in pyproject.toml); an editable
install or a checkout finds them next to the `memory` package.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from memory import sql
from memory.db import CONNECT_TIMEOUT_S, check_reachable, describe_url
from memory.errors import ConfigError, MemoryServiceError
from memory.settings import SCHEMA_NAME
from memory.vectors import require_pgvector

if TYPE_CHECKING:
    from langgraph.store.postgres import PostgresIndexConfig

HEAD = "head"
LEDGER_REVISION = "34fbde1743aa"
"""The revision that creates the erasure ledger: no downgrade undoes it while the ledger holds receipts."""
FILE_TEMPLATE = "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s"
"""Revision files are date-prefixed: `2026_11_21_5b1f0c2d9a41_initial_schema.py`."""

LOCK_TIMEOUT_S = 600.0
LOCK_POLL_S = 0.25

_PACKAGED_SCRIPTS = Path(__file__).resolve().parent / "_alembic"
_REPOSITORY_SCRIPTS = Path(__file__).resolve().parent.parent / "alembic"


class MigrationError(MemoryServiceError):
    """The schema migration failed."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands: its alembic revision against the scripts' head."""

    revision: str | None
    head: str
    before: str | None = None
    """For `upgrade`/`downgrade`: the revision before the command ran."""
    unattributed_threads: tuple[str, ...] = ()
    """For `upgrade`: checkpoint threads no tenant owns (see the thread_ownership revision)."""

    @property
    def at_head(self) -> bool:
        return self.revision == self.head

    @property
    def changed(self) -> bool:
        return self.revision != self.before

    def label(self) -> str:
        """`34fbde1743aa (head)`; `<none>` for a database alembic has not touched."""
        return self._label(self.revision)

    def before_label(self) -> str:
        return self._label(self.before)

    def _label(self, revision: str | None) -> str:
        if revision is None:
            return "<none>"
        return f"{revision} (head)" if revision == self.head else revision

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "head": self.head,
            "at_head": self.at_head,
            "before": self.before,
            "unattributed_threads": list(self.unattributed_threads),
        }


# -- where and how to connect -------------------------------------------------------------


def script_location() -> Path:
    """The alembic scripts: packaged inside `memory` when installed from a wheel, else the repository's."""
    for candidate in (_PACKAGED_SCRIPTS, _REPOSITORY_SCRIPTS):
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationError(
        f"alembic scripts not found in {_PACKAGED_SCRIPTS} or {_REPOSITORY_SCRIPTS}; reinstall deepagents-memory"
    )


def schema_url(url: str, schema: str) -> str:
    """`url` with `options=-c search_path=<schema>,public`, so LangGraph's unqualified tables land in `schema`.

    "public" leaves the URL untouched. Any search_path already in `options` is replaced; other
    options are kept. `public` stays on the path for extensions installed there (pgvector).
    """
    if schema == "public":
        return url
    _check_schema(schema)
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k != "options"]
    options = " ".join(v for k, v in query if k == "options").split()
    cleaned: list[str] = []
    skip = False
    for token in options:
        if skip:
            skip = False
            if token.startswith("search_path="):
                continue
            cleaned.extend(["-c", token])
            continue
        if token == "-c":
            skip = True
        elif token.startswith("-csearch_path=") or token.startswith("--search_path="):
            continue
        else:
            cleaned.append(token)
    cleaned += ["-c", f"search_path={schema},public"]
    kept.append(("options", " ".join(cleaned)))
    return urlunsplit(parts._replace(query=urlencode(kept, quote_via=quote)))


def _check_schema(schema: str) -> None:
    if not SCHEMA_NAME.fullmatch(schema) or schema.startswith("pg_"):
        raise ConfigError(f'[database] schema = {schema!r}: must be a plain lowercase identifier such as "memory"')


def _reason(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return " ".join(str(cause).split()) or type(cause).__name__


@contextmanager
def connect(url: str, schema: str = "public", prepare_threshold: int | None = 0) -> Iterator[Connection]:
    """A SQLAlchemy connection (psycopg 3, no pooling) with the schema on its search_path."""
    check_reachable(url)
    target = schema_url(url, schema)

    def creator() -> psycopg.Connection:
        return psycopg.connect(target, prepare_threshold=prepare_threshold, connect_timeout=CONNECT_TIMEOUT_S)

    engine = create_engine("postgresql+psycopg://", creator=creator, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    except (DBAPIError, psycopg.Error) as exc:
        raise MigrationError(f"schema migration on {describe_url(url)} failed: {_reason(exc)}") from exc
    finally:
        engine.dispose()


def alembic_config(**attributes: Any) -> Config:
    """Alembic's config built in code (no alembic.ini needed); `attributes` reach env.py."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("file_template", FILE_TEMPLATE)
    config.attributes.update(attributes)
    return config


# -- the public steps ---------------------------------------------------------------------


def upgrade(
    url: str,
    revision: str = HEAD,
    *,
    schema: str = "public",
    index: PostgresIndexConfig | None = None,
    prepare_threshold: int | None = 0,
) -> SchemaState:
    """Bring the database to `revision` (head by default): our tables, LangGraph's, their indexes."""
    with connect(url, schema, prepare_threshold) as conn:
        check_search_path(conn, url, schema)
        if index:  # refuse before changing anything
            with autocommit(conn) as driver:
                _check_vectors(driver, url, index)
        with migration_lock(url, schema):
            ensure_schema(conn, schema)
            before = _current_revision(conn, schema)
            _run(command.upgrade, conn, revision, url=url, schema=schema, index=index)
            if revision == HEAD:
                with autocommit(conn) as driver:
                    setup_langgraph(driver, index=index, url=url)
            state = _state(conn, schema, before)
            unowned: tuple[str, ...] = ()
            if conn.exec_driver_sql(sql.OWNERSHIP_PRESENT).scalar():
                conn.exec_driver_sql(sql.OWNERSHIP_CLAIM_FUNCTION)
                conn.exec_driver_sql(sql.OWNERSHIP_CHECK_FUNCTION)
                unowned = tuple(row[0] for row in conn.exec_driver_sql(sql.OWNERSHIP_UNATTRIBUTED_IDS))
            conn.commit()
            return dataclasses.replace(state, unattributed_threads=unowned)


def downgrade(url: str, revision: str, *, schema: str = "public", prepare_threshold: int | None = 0) -> SchemaState:
    """Step the schema back to `revision` ("base" removes our tables; LangGraph's tables and data stay)."""
    with connect(url, schema, prepare_threshold) as conn, migration_lock(url, schema):
        check_search_path(conn, url, schema)
        before = _current_revision(conn, schema)
        if LEDGER_REVISION in _stepped_back(before, revision):
            from memory import erasure

            erasure.guard_downgrade(conn, LEDGER_REVISION)  # before any step: each runs in its own transaction
            conn.commit()
        _run(command.downgrade, conn, revision, url=url, schema=schema, index=None)
        return _state(conn, schema, before)


def _stepped_back(current: str | None, target: str) -> list[str]:
    """The revisions a downgrade from `current` to `target` ("base", a revision, or "-N") undoes."""
    if current is None:
        return []
    script = ScriptDirectory(str(script_location()))
    try:
        return _revisions_between(script, current, target)
    except CommandError as exc:
        raise MigrationError(f"downgrade {target}: {' '.join(str(exc).split())}") from exc


def _revisions_between(script: ScriptDirectory, current: str, target: str) -> list[str]:
    if target.startswith("-") and target[1:].isdigit():
        lower: str | None = current
        for _ in range(int(target[1:])):
            lower = script.get_revision(lower).down_revision if lower else None
    else:
        lower = None if target == "base" else script.get_revision(target).revision
    return [rev.revision for rev in script.iterate_revisions(current, lower)]


def current(url: str, *, schema: str = "public", prepare_threshold: int | None = 0) -> SchemaState:
    """The database's revision and the scripts' head; changes nothing."""
    with connect(url, schema, prepare_threshold) as conn:
        state = _state(conn, schema, None)
        return SchemaState(state.revision, state.head, before=state.revision)


def schema_diff(url: str, *, schema: str = "public", prepare_threshold: int | None = 0) -> list[Any]:
    """Autogenerate's differences between the database and `memory.schema` (our tables only)."""
    from alembic.autogenerate import compare_metadata

    from memory.schema import metadata

    with connect(url, schema, prepare_threshold) as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "target_metadata": metadata,
                "include_object": include_object,
                "version_table_schema": schema,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        diff = compare_metadata(context, metadata)
        conn.rollback()
        return diff


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Autogenerate looks at our tables only: LangGraph's belong to their `setup()`."""
    from memory.schema import metadata

    if type_ == "table":
        return name in metadata.tables
    table = getattr(obj, "table", None)
    return table is None or table.name in metadata.tables


# -- LangGraph's tables -------------------------------------------------------------------


def setup_langgraph(conn: psycopg.Connection, *, index: PostgresIndexConfig | None = None, url: str = "") -> None:
    """`PostgresStore.setup()` and `PostgresSaver.setup()` on an autocommit connection.

    Their migrations use `CREATE INDEX CONCURRENTLY`, which fails inside a transaction. With an
    `index` config the store also creates the pgvector extension and `store_vectors`.
    """
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.store.postgres import PostgresStore

    if not conn.autocommit:
        raise MigrationError("LangGraph's setup() needs an autocommit connection (CREATE INDEX CONCURRENTLY)")
    if index:
        _check_vectors(conn, url, index)
    PostgresStore(conn, index=index).setup()
    PostgresSaver(conn).setup()


def setup_langgraph_in_migration(op: Any) -> None:
    """From a revision: LangGraph's setup() in an autocommit block of alembic's own connection."""
    from alembic import context

    attributes = context.config.attributes
    with op.get_context().autocommit_block():
        setup_langgraph(
            op.get_bind().connection.driver_connection,
            index=attributes.get("index"),
            url=attributes.get("database_url", ""),
        )


def _check_vectors(conn: psycopg.Connection, url: str, index: PostgresIndexConfig) -> None:
    """pgvector must be installable, and an existing `store_vectors` must have the configured dims."""
    require_pgvector(conn, url)
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(sql.STORE_VECTOR_DIMS).fetchone()
    if row is not None and row[0] > 0 and row[0] != int(index["dims"]):
        raise ConfigError(
            f"[index] dims = {index['dims']} but store_vectors on {describe_url(url)} holds {row[0]}-dimension "
            "vectors; set [index] dims back, or drop store_vectors and vector_migrations to re-embed"
        )


# -- plumbing -----------------------------------------------------------------------------


def _run(step: Any, conn: Connection, revision: str, **attributes: Any) -> None:
    config = alembic_config(connection=conn, **attributes)
    try:
        step(config, revision)
    except CommandError as exc:
        raise MigrationError(f"{step.__name__} {revision}: {' '.join(str(exc).split())}") from exc


def _current_revision(conn: Connection, schema: str) -> str | None:
    context = MigrationContext.configure(conn, opts={"version_table_schema": schema})
    heads = context.get_current_heads()
    conn.commit()
    return ",".join(heads) if heads else None


def _state(conn: Connection, schema: str, before: str | None) -> SchemaState:
    head = ScriptDirectory(str(script_location())).get_current_head()
    return SchemaState(_current_revision(conn, schema), head or "", before)


def ensure_schema(conn: Connection, schema: str) -> None:
    if schema == "public":
        return
    _check_schema(schema)
    if conn.exec_driver_sql(sql.SCHEMA_EXISTS, {"schema": schema}).first() is None:
        conn.exec_driver_sql(sql.CREATE_SCHEMA.format(schema=schema))
    conn.commit()


@contextmanager
def migration_lock(url: str, schema: str = "public", timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """One migrator per database at a time, through PgBouncer's transaction pooling too.

    The lock is a transaction-level advisory lock held by an open transaction on a connection of
    its own: PgBouncer pins that transaction to one server connection, and the lock goes when the
    transaction (or the connection) ends, so it never leaks into a pooled server connection the
    way a session lock would. Waiters poll with short transactions, so they never hold a snapshot
    that the holder's CREATE INDEX CONCURRENTLY would wait on.
    """
    deadline = time.monotonic() + timeout_s
    try:
        # never prepared: a named prepared statement leaves the idle transaction holding a catalog
        # snapshot (backend_xmin), and CREATE INDEX CONCURRENTLY would wait for it forever
        holder = psycopg.connect(schema_url(url, schema), prepare_threshold=None, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        raise MigrationError(f"schema migration on {describe_url(url)} failed: {_reason(exc)}") from exc
    with holder:
        while True:
            holder.execute(sql.NO_IDLE_TIMEOUT)
            if holder.execute(sql.TRY_MIGRATION_LOCK).fetchone()[0]:
                break
            holder.rollback()
            if time.monotonic() > deadline:
                raise MigrationError(
                    f"another migration of {describe_url(url)} has held the migration lock for {timeout_s:.0f}s; "
                    "wait for it to finish (see pg_locks, locktype = 'advisory') and retry"
                )
            time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            if not holder.closed:
                holder.rollback()


def check_search_path(conn: Connection, url: str, schema: str) -> None:
    """Refuse to migrate when the connection's search_path does not start with `schema`.

    Guards against tables silently landing in public, e.g. behind a PgBouncer that drops the
    `options` startup parameter (ignore_startup_parameters = options).
    """
    if schema == "public":
        return
    path = conn.exec_driver_sql(sql.SEARCH_PATH).scalar() or ""
    conn.commit()
    first = path.split(",")[0].strip().strip('"')
    if first != schema:
        info = conninfo_to_dict(url)
        raise MigrationError(
            f"[database] schema = {schema!r} but connections to {describe_url(url)} get search_path {path!r}; "
            f"if a pooler drops the `options` startup parameter, run once: ALTER ROLE "
            f"\"{info.get('user') or 'postgres'}\" IN DATABASE \"{info.get('dbname', '')}\" "
            f"SET search_path = {schema}, public"
        )


@contextmanager
def autocommit(conn: Connection) -> Iterator[psycopg.Connection]:
    """The psycopg connection under `conn`, in autocommit mode for the duration."""
    if conn.in_transaction():
        conn.commit()
    previous = conn.get_isolation_level()
    conn.execution_options(isolation_level="AUTOCOMMIT")
    try:
        yield conn.connection.driver_connection
    finally:
        conn.execution_options(isolation_level=previous)
