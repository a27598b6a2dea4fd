"""Real PostgreSQL for every test: the embedded PG 18 + pgvector, and the machine's PG 15 when present.

A template database is migrated once per server; each test gets `CREATE DATABASE ... TEMPLATE`.
"""

from __future__ import annotations

import os

# Deep agents snapshot their DeltaChannels (messages, files) every 50 updates or every this many
# supersteps (default 5000): set low before LangGraph is imported, so short test threads have
# snapshots and checkpoint pruning has history it may trim (tests/test_checkpoint_pruning.py).
os.environ.setdefault("LANGGRAPH_DELTA_MAX_SUPERSTEPS_SINCE_SNAPSHOT", "4")

import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql as pgsql

from memory import MemoryService
from memory.db import with_dbname
from memory.embedded import EmbeddedPostgres

LOCAL_PG15_URL = os.environ.get("MEMORY_TEST_PG15_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEMPLATE = f"memory_test_template_{os.getpid()}"
"""One per pytest process, so concurrent sessions on a shared server never clash."""


@dataclass
class PgServer:
    name: str
    admin_url: str

    def url_for(self, dbname: str) -> str:
        return with_dbname(self.admin_url, dbname)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_url, autocommit=True)

    def create_database(self, dbname: str, template: str | None = None) -> str:
        query = pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(dbname))
        if template:
            query += pgsql.SQL(" TEMPLATE {}").format(pgsql.Identifier(template))
        with self.admin() as conn:
            conn.execute(query)
        return self.url_for(dbname)

    def drop_database(self, dbname: str) -> None:
        with self.admin() as conn:
            conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(dbname)))


def _build_template(server: PgServer) -> None:
    server.drop_database(TEMPLATE)
    url = server.create_database(TEMPLATE)
    with MemoryService.open(database_url=url, database_pool_max_size=2) as svc:
        svc.setup()


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[PgServer]:
    data_dir = Path(tempfile.mkdtemp(prefix="memory-tests-"))
    server = EmbeddedPostgres(data_dir)
    url = server.start()
    pg = PgServer("pg18", with_dbname(url, "postgres"))
    _build_template(pg)
    yield pg
    server.stop()


@pytest.fixture(scope="session")
def local_pg15() -> Iterator[PgServer]:
    try:
        with psycopg.connect(LOCAL_PG15_URL, connect_timeout=3) as conn:
            version = conn.info.server_version
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {LOCAL_PG15_URL} ({exc.__class__.__name__}); set MEMORY_TEST_PG15_URL")
    pg = PgServer(f"pg{version // 10000}", LOCAL_PG15_URL)
    _build_template(pg)
    yield pg
    pg.drop_database(TEMPLATE)


@pytest.fixture(params=["pg18", "pg15"])
def pg_server(request: pytest.FixtureRequest) -> PgServer:
    """Each test that takes it runs on both servers."""
    return request.getfixturevalue("embedded_server" if request.param == "pg18" else "local_pg15")


@pytest.fixture
def database_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh database, migrated (cloned from the template), dropped afterwards."""
    name = f"memory_test_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name, template=TEMPLATE)
    yield url
    pg_server.drop_database(name)


@pytest.fixture
def service(database_url: str) -> Iterator[MemoryService]:
    with MemoryService.open(database_url=database_url, database_pool_max_size=24) as svc:
        yield svc


@pytest.fixture(autouse=True)
def _backup_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's own `[backup] dir`: erasure receipts written there by one test never reach another's restore."""
    monkeypatch.setenv("MEMORY_BACKUP_DIR", str(tmp_path_factory.mktemp("backups")))


@pytest.fixture
def vector_service(embedded_server: PgServer) -> Iterator[MemoryService]:
    """A service with pgvector rows (`store_vectors`, the offline 8-dim embedding), on a database of its own."""
    name = f"memory_vectors_{uuid.uuid4().hex[:10]}"
    url = embedded_server.create_database(name)
    try:
        with MemoryService.open(database_url=url, database_pool_max_size=8, index_dims=8, index_embed="fake") as svc:
            svc.setup()
            yield svc
    finally:
        embedded_server.drop_database(name)
