"""Real PostgreSQL for every test: the embedded PG 18 + pgvector, and the machine's PG 15 when present.

A template database is migrated once per server; each test gets `CREATE DATABASE ... TEMPLATE`.
"""

from __future__ import annotations

import os

# Deep agents snapshot their DeltaChannels (messages, files) every 50 updates or every this many
# supersteps (default 5000): set low before LangGraph is imported, so short test threads have
# snapshots and checkpoint pruning has history it may trim (tests/test_checkpoint_pruning.py).
os.environ.setdefault("LANGGRAPH_DELTA_MAX_SUPERSTEPS_SINCE_SNAPSHOT", "4")

import shutil
import socket
import subprocess
import tempfile
import time
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
    shutil.rmtree(data_dir, ignore_errors=True)  # ~70 MB per session otherwise


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


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir for an embedded server of the test's own, outside pytest's temp root: another pytest
    session starting meanwhile makes that root private again (0700), and the embedded server's user
    could no longer reach its files."""
    path = Path(tempfile.mkdtemp(prefix="memory-data-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


ALL_SERVERS = ("pg18", "pg15")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "servers(*names): the servers a `pg_server` test runs on (default: the module's SERVERS)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`pg_server` tests run on both servers when their SQL is what they test; a module whose tests do
    not depend on the server's version says `SERVERS = ("pg18",)` and runs on the embedded one only, and
    a test says `@pytest.mark.servers("pg18")` (a CLI test whose SQL the library tests cover on both)."""
    if "pg_server" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("servers")
        servers = marker.args if marker else getattr(metafunc.module, "SERVERS", ALL_SERVERS)
        metafunc.parametrize("pg_server", servers, indirect=True)


@pytest.fixture
def pg_server(request: pytest.FixtureRequest) -> PgServer:
    """The server of this parametrization (see pytest_generate_tests)."""
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


# -- PgBouncer (transaction pooling) before the PG 15 server, when the machine has one ----------


@pytest.fixture
def pgbouncer(local_pg15, tmp_path_factory) -> Iterator:
    """`start(ignore_options)` runs PgBouncer in transaction mode before the PG 15 server; gives its URL base."""
    binary = (
        os.environ.get("MEMORY_TEST_PGBOUNCER")
        or shutil.which("pgbouncer")
        or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    )
    if binary is None:
        pytest.skip("no pgbouncer on this machine (apt-get install pgbouncer)")
    server = psycopg.conninfo.conninfo_to_dict(local_pg15.admin_url)
    if server.get("password"):
        pytest.skip("the PgBouncer test uses trust authentication; MEMORY_TEST_PG15_URL has a password")
    processes: list[subprocess.Popen] = []

    def start(ignore_options: bool) -> str:
        folder = tmp_path_factory.mktemp("pgbouncer")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        user = server.get("user", "postgres")
        (folder / "users.txt").write_text(f'"{user}" ""\n')
        (folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.get('host', '127.0.0.1')} port={server.get('port', 5432)}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
            "pool_mode = transaction\ndefault_pool_size = 10\n"
            + ("ignore_startup_parameters = options\n" if ignore_options else "")
        )
        command = [binary, str(folder / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            shutil.chown(folder, "postgres")
            for path in folder.iterdir():
                shutil.chown(path, "postgres")
            command[1:1] = ["-u", "postgres"]
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        base = f"postgresql://{user}@127.0.0.1:{port}"
        for _ in range(100):
            try:
                psycopg.connect(f"{base}/postgres", connect_timeout=1, prepare_threshold=None).close()
                return base
            except psycopg.OperationalError:
                time.sleep(0.05)
        pytest.fail("pgbouncer did not start")

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)
