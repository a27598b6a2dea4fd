"""Backups of the service's tables: `pg_dump -Fc` plus a JSON manifest beside it; verify; restore.

A backup is two files in the backup directory:
    memory-20261121T020000Z.dump   pg_dump's custom format, the service's tables only
    memory-20261121T020000Z.json   the manifest: server version, schema revision, row counts, sha256

Row counts and the dump come from one exported snapshot, so they agree exactly; `created_at` is
the snapshot's time on the server. Nothing a restore decides comes from the manifest: the tables,
schema and erasure ledger are read from the archive itself; `verify` checks that the manifest
agrees with the archive (sha256, tables, schema, revision, erasures seen, time of the dump).

A restore never leaves the target half-done: the archive is verified first, then `pg_restore -f -`
streams its script (never written to disk) through this process into psql, framed as ONE
explicit transaction: BEGIN, a prelude (drop the service's tables), the script, a postlude (keep
the target's erasure ledger, write every known receipt, erase again every erasure the archive's
own ledger does not hold: see memory.erasure), COMMIT. Any error, or this process dying (its
children die with it), ends psql before COMMIT and the server rolls everything back. Then the
schema is migrated to head. A backup taken before the ledger table existed (no `memory_tenant_erasures`
in it) cannot take the target's ledger rows inside that transaction, since the migration creates
the table afterwards: those rows are written right after the migration, and if the migration
fails the error names them.

Long steps report progress through `on_step(step, done, total)` (see `Step`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from memory import erasure, sql
from memory.db import CONNECT_TIMEOUT_S, describe_url, unavailable
from memory.errors import MemoryServiceError
from memory.pgtools import PgTool, connection_args, find_tool, sibling

FORMAT = "memory-backup"
FORMAT_VERSION = 1
PREFIX = "memory-"
ARCHIVE_SUFFIX = ".dump"
MANIFEST_SUFFIX = ".json"

SERVICE_TABLES = (
    "store",
    "store_vectors",
    "store_migrations",
    "vector_migrations",
    "checkpoints",
    "checkpoint_blobs",
    "checkpoint_writes",
    "checkpoint_migrations",
    "memory_threads",
    "memory_job_runs",
    "memory_tenant_erasures",
    "memory_quota_limits",
    "memory_tenant_usage",
    "memory_api_keys",
    "memory_job_watermarks",
    "memory_job_ticks",
    "alembic_version",
)
"""Every table a backup may hold (those present are dumped), in restore-drop order."""

DATA_TABLES = ("store", "checkpoints", "checkpoint_blobs", "checkpoint_writes", "memory_job_runs")
"""A target holding rows in any of these is not empty: restoring over it needs --force."""

Step = Callable[[str, int, int | None], None] | None
"""`on_step(step, done, total)`: `done` of `total` units of `step` are finished (`total` None: size
unknown). A call naming another step means the previous one is over."""

MIB = 1 << 20


class BackupError(MemoryServiceError):
    """The backup or restore failed."""


@dataclass
class BackupManifest:
    file: str
    sha256: str
    size: int
    created_at: str
    server_version: str
    schema: str
    schema_revision: str | None
    tables: dict[str, int]
    pg_dump: str
    database: str
    format: str = FORMAT
    version: int = FORMAT_VERSION
    erasures: list[str] | None = None
    """Receipts in the archive's ledger (informational: `verify` checks them against the archive)."""
    path: Path | None = field(default=None, compare=False)
    """Where the archive is on disk (not written to the manifest)."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        return data

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)

    @property
    def archive_major(self) -> int:
        return int(self.pg_dump.split(".")[0])

    @classmethod
    def read(cls, path: Path) -> BackupManifest:
        """The manifest of `path` (the archive or its .json), checked for shape and format version."""
        path = Path(path)
        manifest_path = path.with_suffix(MANIFEST_SUFFIX)
        archive = path.with_suffix(ARCHIVE_SUFFIX)
        if not manifest_path.is_file():
            raise BackupError(f"{path}: no manifest {manifest_path.name} beside it; is this a `memory backup create` archive?")
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BackupError(f"{manifest_path}: not valid JSON ({exc}); the manifest is damaged") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BackupError(f"{manifest_path}: not a {FORMAT} manifest")
        if data.get("version") != FORMAT_VERSION:
            raise BackupError(
                f"{manifest_path}: backup format version {data.get('version')!r} is not supported "
                f"(this release reads version {FORMAT_VERSION}); use a matching deepagents-memory release"
            )
        try:
            manifest = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k not in ("path", "erasures")})
            manifest.erasures = data.get("erasures")
        except KeyError as exc:
            raise BackupError(f"{manifest_path}: manifest lacks {exc.args[0]!r}") from None
        manifest.path = archive
        return manifest


@dataclass
class RestoreReport:
    file: str
    target: str
    created_at: str
    tables: dict[str, int]
    erasures_kept: int
    erasures_replayed: list[str]
    schema_revision: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- helpers --------------------------------------------------------------------------------


def _connect(url: str, **kwargs: Any) -> psycopg.Connection:
    try:
        return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, row_factory=dict_row, **kwargs)
    except psycopg.Error as exc:
        raise unavailable(url, exc) from exc


def _say(on_step: Step, step: str, done: int = 0, total: int | None = None) -> None:
    if on_step is not None:
        on_step(step, done, total)


def sha256_file(path: Path, on_step: Step = None) -> str:
    """The file's sha256; progress in MiB read as step "sha256 of the archive (MiB)"."""
    step = "sha256 of the archive (MiB)"
    total = -(-Path(path).stat().st_size // MIB)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for done, chunk in enumerate(iter(lambda: fh.read(MIB), b""), 1):
            digest.update(chunk)
            _say(on_step, step, done, total)
    _say(on_step, step, total, total)
    return digest.hexdigest()


def _run(tool: PgTool | str, args: list[str], what: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [str(tool.path if isinstance(tool, PgTool) else tool), *args]
    done = subprocess.run(command, capture_output=True, env={**_tool_env(), **(env or {})}, preexec_fn=_die_with_parent)
    if done.returncode != 0:
        raise BackupError(f"{what}: {_first_error(done.stderr)}")
    return done


def _tool_env() -> dict[str, str]:
    """The client programs' environment: a connect timeout; UTC, so an archive's header time is UTC."""
    return {**os.environ, "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S), "TZ": "UTC"}


def _prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _prctl()
"""Resolved once here: the child only calls it between fork and exec (no dlopen there)."""


def _die_with_parent() -> None:
    """In a child before exec: die (SIGKILL) when this process dies, kill -9 included (Linux)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _first_error(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    for line in lines:
        if "ERROR" in line or "error:" in line or "FATAL" in line:
            return line
    return lines[0] if lines else "failed without a message"


def target_schema(conn: psycopg.Connection) -> str:
    """The schema the connection's search_path names first (even before it exists), else current_schema()."""
    path = conn.execute(sql.SEARCH_PATH).fetchone()["search_path"] or ""
    first = path.split(",")[0].strip().strip('"')
    if first and first != "$user":
        return first
    return conn.execute(sql.BACKUP_CURRENT_SCHEMA).fetchone()["schema"] or "public"


def present_tables(
    conn: psycopg.Connection, tables: Iterable[str] = SERVICE_TABLES, schema: str | None = None
) -> list[str]:
    """The service tables that exist in `schema` (default: the search_path's first), in SERVICE_TABLES order."""
    wanted = list(tables)
    params = {"tables": wanted, "schema": schema or target_schema(conn)}
    found = {row["name"] for row in conn.execute(sql.BACKUP_TABLES_PRESENT, params).fetchall()}
    return [t for t in wanted if t in found]


def table_checksums(conn: psycopg.Connection, tables: Iterable[str] | None = None) -> dict[str, tuple[int, str]]:
    """(rows, md5 of the sorted rows) per present service table: equal checksums, equal contents."""
    result = {}
    for table in present_tables(conn, tables or SERVICE_TABLES):
        query = pgsql.SQL(sql.BACKUP_TABLE_CHECKSUM).format(table=pgsql.Identifier(table))
        row = conn.execute(query).fetchone()
        result[table] = (row["n"], row["md5"])
    return result


def _schema_revision(conn: psycopg.Connection, tables: list[str]) -> str | None:
    if "alembic_version" not in tables:
        return None
    row = conn.execute(sql.TENANT_ALEMBIC_REVISION).fetchone()
    return row["version_num"] if row else None


# -- create, list, prune --------------------------------------------------------------------


def create_backup(url: str, out_dir: Path, *, keep: int | None = None, on_step: Step = None) -> BackupManifest:
    """Dump the service's tables under `out_dir`; prune to the newest `keep` backups when given."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _connect(url) as conn:
        server_major = conn.info.server_version // 10000
        pg_dump = find_tool("pg_dump", server_major)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot for counts and dump
        conn.read_only = True
        snap = conn.execute(sql.BACKUP_SNAPSHOT).fetchone()
        schema = target_schema(conn)
        tables = present_tables(conn, schema=schema)
        if "store" not in tables or "checkpoints" not in tables:
            raise BackupError(f"{describe_url(url)} has no service tables in schema {schema!r}; run `memory db upgrade` first")
        created = snap["now"].astimezone(timezone.utc)
        stem = f"{PREFIX}{created.strftime('%Y%m%dT%H%M%S%fZ')}"
        archive = out_dir / f"{stem}{ARCHIVE_SUFFIX}"
        partial = archive.with_name(archive.name + ".partial")
        args = ["--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snap['snapshot']}", "-f", str(partial)]
        for t in tables:
            args += ["-t", f'"{schema}"."{t}"']
        dbname, secret = connection_args(url)  # the password through PGPASSWORD, never argv
        args.append(dbname)
        _say(on_step, f"pg_dump -Fc of {len(tables)} tables")
        try:
            _run(pg_dump, args, f"pg_dump of {describe_url(url)} failed", env=secret)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        # after pg_dump, in the same snapshot: the archive's header time stays next to created_at
        counts = _count_rows(conn, tables, on_step)
        revision = _schema_revision(conn, tables)
        ledger = erasure.ledger(conn)
        conn.rollback()
    partial.rename(archive)
    erasure.sync_receipts(ledger, out_dir)
    manifest = BackupManifest(
        file=archive.name,
        sha256=sha256_file(archive, on_step),
        size=archive.stat().st_size,
        created_at=created.isoformat(),
        server_version=snap["server_version"],
        schema=schema,
        schema_revision=revision,
        tables=counts,
        pg_dump=pg_dump.version,
        database=describe_url(url),
        erasures=[e.receipt for e in ledger],
        path=archive,
    )
    tmp = archive.with_suffix(".json.partial")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.rename(archive.with_suffix(MANIFEST_SUFFIX))
    if keep is not None:
        prune(out_dir, keep)
    return manifest


def _count_rows(conn: psycopg.Connection, tables: list[str], on_step: Step) -> dict[str, int]:
    """Rows per table in the connection's snapshot; progress in tables counted."""
    counts = {}
    _say(on_step, "count rows (tables)", 0, len(tables))
    for done, table in enumerate(tables, 1):
        counts[table] = conn.execute(pgsql.SQL(sql.BACKUP_COUNT_ROWS).format(table=pgsql.Identifier(table))).fetchone()["n"]
        _say(on_step, "count rows (tables)", done, len(tables))
    return counts


def list_backups(backup_dir: Path) -> list[BackupManifest]:
    """Backups in `backup_dir` (those with a readable manifest), newest first."""
    backup_dir = Path(backup_dir)
    if not backup_dir.is_dir():
        return []
    manifests = []
    for path in backup_dir.glob(f"{PREFIX}*{MANIFEST_SUFFIX}"):
        try:
            manifests.append(BackupManifest.read(path))
        except BackupError:
            continue
    return sorted(manifests, key=lambda m: m.created_at, reverse=True)


def prune(backup_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` backups; return the archives removed."""
    removed = []
    for manifest in list_backups(backup_dir)[keep:]:
        assert manifest.path is not None
        manifest.path.unlink(missing_ok=True)
        manifest.path.with_suffix(MANIFEST_SUFFIX).unlink(missing_ok=True)
        removed.append(manifest.path)
    return removed


# -- verify -----------------------------------------------------------------------------------


@dataclass
class ArchiveFacts:
    """What the archive itself says (the manifest may be edited; these cannot be without the sha256 changing)."""

    tables: list[str]
    schema: str
    ledger: list[erasure.Erasure] | None
    """The archive's erasure ledger; None when the archive has no ledger table (taken before it existed)."""
    revision: str | None
    dumped_at: datetime | None
    """The archive header's time (pg_dump's start, seconds), when written in UTC."""


_HEADER_TIME = re.compile(r"^; Archive created at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC$", re.M)
CLOCK_SLACK_S = 300
"""How far the manifest's created_at may be from the archive header's time (clock skew, slow start)."""


def verify_backup(path: Path, pg_restore: PgTool | None = None, on_step: Step = None) -> BackupManifest:
    """Checksum, `pg_restore --list`, and the manifest agreeing with the archive; one `BackupError` line otherwise."""
    return verify_archive(path, pg_restore, on_step)[0]


def verify_archive(path: Path, pg_restore: PgTool | None = None, on_step: Step = None) -> tuple[BackupManifest, ArchiveFacts]:
    """`verify_backup`, and the facts read from the archive that restores go by."""
    manifest = BackupManifest.read(Path(path))
    archive = manifest.path
    assert archive is not None
    if not archive.is_file():
        raise BackupError(f"{archive}: archive missing (the manifest {archive.with_suffix(MANIFEST_SUFFIX).name} names it)")
    digest = sha256_file(archive, on_step)
    if digest != manifest.sha256:
        raise BackupError(
            f"{archive.name}: sha256 {digest[:12]}… does not match the manifest's {manifest.sha256[:12]}… "
            f"(size {archive.stat().st_size} bytes, manifest says {manifest.size}): the archive is truncated or altered"
        )
    tool = pg_restore or find_tool("pg_restore", manifest.archive_major)
    _say(on_step, "pg_restore --list")
    facts = _archive_facts(tool, archive)
    _check_manifest(manifest, facts, archive.name)
    return manifest, facts


def _archive_facts(tool: PgTool, archive: Path) -> ArchiveFacts:
    listing = _run(tool, ["--list", str(archive)], f"{archive.name}: pg_restore cannot read the archive").stdout
    text = listing.decode("utf-8", "replace")
    tables, schemas = [], set()
    for line in text.splitlines():
        parts = line.split()
        # "216; 0 16390 TABLE DATA public store postgres"
        if "TABLE" in parts and "DATA" in parts:
            i = parts.index("DATA")
            if len(parts) > i + 2:
                schemas.add(parts[i + 1])
                tables.append(parts[i + 2])
    header = _HEADER_TIME.search(text)
    dumped_at = datetime.fromisoformat(header.group(1)).replace(tzinfo=timezone.utc) if header else None
    wanted = [t for t in ("memory_tenant_erasures", "alembic_version") if t in tables]
    data = ""
    if wanted:  # two small tables, read to memory; the archive's other data is never extracted here
        args = ["--data-only", "-f", "-"] + [a for t in wanted for a in ("-t", t)] + [str(archive)]
        data = _run(tool, args, f"{archive.name}: pg_restore cannot read the archive").stdout.decode("utf-8")
    ledger = erasure.ledger_from_copy(data) if "memory_tenant_erasures" in tables else None
    versions = erasure.parse_copy(data, "alembic_version")
    return ArchiveFacts(
        tables=tables,
        schema=next(iter(schemas)) if len(schemas) == 1 else "",
        ledger=ledger,
        revision=versions[0]["version_num"] if versions else None,
        dumped_at=dumped_at,
    )


def _check_manifest(manifest: BackupManifest, facts: ArchiveFacts, name: str) -> None:
    """Every manifest field the archive can confirm must agree with it."""
    missing = sorted(set(manifest.tables) - set(facts.tables))
    if missing:
        raise BackupError(f"{name}: tables {', '.join(missing)} are in the manifest but not in the archive")
    unlisted = sorted(set(facts.tables) - set(manifest.tables))
    problems = []
    if unlisted:
        problems.append(f"tables {', '.join(unlisted)} are in the archive but not in the manifest")
    if facts.schema and manifest.schema != facts.schema:
        problems.append(f"schema {manifest.schema!r}, the archive's is {facts.schema!r}")
    if "alembic_version" in facts.tables and manifest.schema_revision != facts.revision:
        problems.append(f"schema_revision {manifest.schema_revision!r}, the archive's is {facts.revision!r}")
    if manifest.erasures is not None and facts.ledger is not None:
        if sorted(manifest.erasures) != sorted(e.receipt for e in facts.ledger):
            problems.append(f"{len(manifest.erasures)} erasures, the archive's ledger holds {len(facts.ledger)} others")
    if facts.dumped_at is not None:
        try:
            created = manifest.created
        except (TypeError, ValueError):
            problems.append(f"created_at {manifest.created_at!r} is not a time")
        else:
            gap = (created - facts.dumped_at).total_seconds() if created.tzinfo else None
            if gap is None or abs(gap) > CLOCK_SLACK_S:
                problems.append(f"created_at {manifest.created_at}, the archive was dumped at {facts.dumped_at.isoformat()}")
    if problems:
        raise BackupError(f"{name}: the manifest does not match the archive ({'; '.join(problems)}): the manifest was edited")


# -- restore ----------------------------------------------------------------------------------


def _target_has_rows(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    nonempty = []
    for t in tables:
        if t in DATA_TABLES:
            query = pgsql.SQL(sql.BACKUP_TARGET_HAS_ROWS).format(table=pgsql.Identifier(t))
            if conn.execute(query).fetchone()["has_rows"]:
                nonempty.append(t)
    return nonempty


def _render(cur: psycopg.ClientCursor, query: Any, params: dict[str, Any] | None = None) -> str:
    return cur.mogrify(query, params).strip() + ";\n"


def restore_backup(
    path: Path,
    target_url: str,
    *,
    force: bool = False,
    on_step: Step = None,
    upgrade: Callable[[str], Any] | None = None,
    receipts_dirs: Iterable[Path] | None = None,
) -> RestoreReport:
    """Restore the backup at `path` into `target_url` in one transaction, then migrate to head.

    Refuses a target holding data unless `force`. Every erasure known to the target's ledger or to
    the receipt files in `receipts_dirs` (default: the archive's directory) ends up in the restored
    ledger, and each one the archive's own ledger does not hold is erased again (memory.erasure).
    `upgrade(url)` migrates afterwards (default: `memory.migrations.upgrade` in the backup's schema).
    """
    manifest, facts = verify_archive(path, on_step=on_step)
    archive = manifest.path
    assert archive is not None
    dirs = [archive.parent] if receipts_dirs is None else list(receipts_dirs)
    where = describe_url(target_url)
    with _connect(target_url, autocommit=True) as conn:
        server_major = conn.info.server_version // 10000
        schema = target_schema(conn)
        if facts.schema and schema != facts.schema:
            raise BackupError(
                f"the backup holds schema {facts.schema!r} but {where} uses {schema!r}; "
                f"set [database] schema = {facts.schema!r} for the restore; nothing was changed"
            )
        existing = present_tables(conn, schema=schema)
        nonempty = _target_has_rows(conn, existing)
        if nonempty and not force:
            raise BackupError(
                f"{where} is not empty ({', '.join(nonempty)} hold rows); pass --force to replace its data; nothing was changed"
            )
        known = erasure.merged(erasure.ledger(conn), erasure.read_receipts(dirs))
        if dirs:  # the target's receipts outlive it: beside the archive, before anything changes
            erasure.sync_receipts(known, dirs[0])
        replay = erasure.unseen(known, facts.ledger or [])
        pg_restore = find_tool("pg_restore", max(server_major, manifest.archive_major))
        psql = sibling(pg_restore, "psql")
        cur = psycopg.ClientCursor(conn)
        search_path = f"{pgsql.Identifier(schema).as_string(conn)}, public"
        prelude = [_render(cur, sql.RESTORE_SEARCH_PATH, {"path": search_path})]
        if schema != "public":
            prelude.append(_render(cur, pgsql.SQL(sql.RESTORE_CREATE_SCHEMA).format(schema=pgsql.Identifier(schema))))
        if "store_vectors" in facts.tables:
            prelude.append(_render(cur, sql.RESTORE_CREATE_VECTOR))
        # the quota triggers restored with `store` need their functions (pg_dump -t leaves them out)
        prelude.extend(_render(cur, statement) for statement in sql.QUOTA_FUNCTIONS)
        for t in SERVICE_TABLES:
            prelude.append(
                _render(cur, pgsql.SQL(sql.RESTORE_DROP_TABLE).format(table=pgsql.Identifier(schema, t)))
            )
        postlude = [_render(cur, sql.RESTORE_SEARCH_PATH, {"path": search_path})]
        # API servers drop their cached keys when the restore commits (the keys table was replaced)
        postlude.append(_render(cur, sql.API_KEYS_NOTIFY, {"payload": "restore"}))
        ledger_in_backup = facts.ledger is not None
        if ledger_in_backup:
            postlude.extend(_render(cur, sql.RESTORE_KEEP_ERASURE, _erasure_params(e)) for e in known)
        replayed = list(dict.fromkeys(e.tenant for e in replay))
        for tenant in replayed:
            postlude.extend(_render(cur, q, p) for q, p in erase_statements(
                tenant, "store_vectors" in facts.tables, owned="memory_threads" in facts.tables))

    _say(on_step, f"restore {sum(manifest.tables.values()):,} rows (one transaction)")
    stream_restore(
        pg_restore, psql, archive, target_url,
        head="".join(prelude).encode("utf-8"), tail="".join(postlude).encode("utf-8"),
        drop_newer_settings=server_major < 17, where=where,
    )
    _say(on_step, "migrate to head")
    try:
        revision = _migrate(target_url, schema, upgrade, facts.revision)
    except MemoryServiceError as exc:
        if known and not ledger_in_backup:
            raise _ledger_not_kept(exc, known, dirs) from exc
        raise
    if known and not ledger_in_backup:
        _say(on_step, "keep the target's erasure ledger")
        _keep_erasures(target_url, known)
    return RestoreReport(
        file=archive.name,
        target=where,
        created_at=manifest.created_at,
        tables=manifest.tables,
        erasures_kept=len(known),
        erasures_replayed=replayed,
        schema_revision=revision,
    )


# -- the restore pipeline: pg_restore -> this process -> psql, never a file -------------------------------

COPY_CHUNK = 1 << 20
STDERR_KEEP = 64 * 1024


CLIENT_CHECK = "-c client_connection_check_interval=1000"
"""For psql's session: the server notices within a second that psql is gone (even while it waits on a
lock) and rolls back, releasing the restore's locks on the live tables."""


def spawn(tool: PgTool, args: list[str], *, secret: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
    """Start a client program that dies with this process (see `_die_with_parent`); stderr piped;
    `secret` (PGPASSWORD) goes to its environment."""
    env = {**_tool_env(), **(secret or {})}
    if tool.name == "psql":
        env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {CLIENT_CHECK}".strip()
    return subprocess.Popen(
        [str(tool.path), *args], env=env, preexec_fn=_die_with_parent, stderr=subprocess.PIPE, **kwargs
    )


def _drain(stream: Any, keep: list[bytes]) -> threading.Thread:
    """Read `stream` to its end in a thread, keeping its first STDERR_KEEP bytes (in memory only)."""

    def run() -> None:
        size = 0
        for chunk in iter(lambda: stream.read(8192), b""):
            if size < STDERR_KEEP:
                keep.append(chunk)
                size += len(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def stop(*procs: subprocess.Popen | None) -> None:
    """Kill and reap the children still running."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
    for proc in procs:
        if proc is not None:
            proc.wait()


def _close(*procs: subprocess.Popen | None) -> None:
    for proc in procs:
        for stream in (proc.stdin, proc.stdout, proc.stderr) if proc is not None else ():
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def stream_restore(
    pg_restore: PgTool,
    psql: PgTool,
    archive: Path,
    target_url: str,
    *,
    head: bytes,
    tail: bytes,
    drop_newer_settings: bool,
    where: str,
    restore_args: Iterable[str] = (),
) -> None:
    """BEGIN; head; the archive's script; tail; COMMIT into psql, the COMMIT only once pg_restore succeeded.

    The script goes through a pipe, never a file. If anything fails, or this process is stopped
    (its children get SIGKILL when it dies), psql ends before COMMIT and the server rolls back.
    """
    restore = apply = None
    errors: dict[str, list[bytes]] = {"pg_restore": [], "psql": []}
    drains = []
    try:
        restore = spawn(
            pg_restore, ["--no-owner", "--no-privileges", *restore_args, "-f", "-", str(archive)], stdout=subprocess.PIPE
        )
        drains.append(_drain(restore.stderr, errors["pg_restore"]))
        dbname, secret = connection_args(target_url)  # the password through PGPASSWORD, never argv
        apply = spawn(
            psql, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", dbname],
            secret=secret, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        )
        drains.append(_drain(apply.stderr, errors["psql"]))
        try:
            apply.stdin.write(b"BEGIN;\n" + head)
            _copy_script(restore.stdout, apply.stdin, drop_newer_settings)
            if restore.wait() == 0:
                apply.stdin.write(tail + b"COMMIT;\n")
            apply.stdin.close()
        except BrokenPipeError:  # psql stopped on an error: its message says why
            pass
        apply.wait()
    finally:
        stop(restore, apply)
        for thread in drains:
            thread.join(timeout=5)
        _close(restore, apply)
    if apply.returncode != 0:
        raise BackupError(
            f"restore into {where} failed and was rolled back, the target is unchanged: {_first_error(b''.join(errors['psql']))}"
        )
    if restore.returncode != 0:
        raise BackupError(
            f"{archive.name}: pg_restore cannot read the archive ({_first_error(b''.join(errors['pg_restore']))}); "
            f"{where} was not changed"
        )


def _copy_script(src: Any, dst: Any, drop_newer_settings: bool) -> None:
    """pg_restore's script into psql; settings older servers reject are dropped from its header."""
    if drop_newer_settings:
        for line in iter(src.readline, b""):
            if line.rstrip(b"\r\n") not in NEWER_SETTINGS:
                dst.write(line)
            if line.startswith((b"CREATE ", b"COPY ")):
                break
    shutil.copyfileobj(src, dst, COPY_CHUNK)


def _erasure_params(e: erasure.Erasure) -> dict[str, Any]:
    return {"tenant": e.tenant, "erased_at": e.erased_at, "counts": json.dumps(e.counts)}


def _migrate(url: str, schema: str, upgrade: Callable[[str], Any] | None, fallback: str | None) -> str | None:
    """Migrate to head; the revision reached."""
    if upgrade is None:
        from memory import migrations

        return migrations.upgrade(url, schema=schema).revision
    return getattr(upgrade(url), "revision", fallback)


def _keep_erasures(url: str, ledger: list[erasure.Erasure]) -> None:
    """Write the known erasures into the ledger (after the migration created the table), in one transaction."""
    with _connect(url) as conn, conn.transaction():
        for e in ledger:
            conn.execute(sql.RESTORE_KEEP_ERASURE, _erasure_params(e))


def _ledger_not_kept(exc: BaseException, ledger: list[erasure.Erasure], dirs: list[Path]) -> BackupError:
    tenants = sorted({e.tenant for e in ledger})
    kept = f"their receipts are kept in {dirs[0]}" if dirs else "no receipt directory was given"
    return BackupError(
        f"{exc}; the restore was committed (erasures replayed) but, without the migration, the erasure ledger of "
        f"{', '.join(tenants)} could not be written back ({kept}): once `memory db upgrade` succeeds, run the same "
        f"restore again with --force to record them"
    )


NEWER_SETTINGS = (b"SET transaction_timeout = 0;",)
"""Lines a PG 17+ pg_restore writes that older servers reject (the setting does not exist there)."""


def erase_statements(tenant: str, vectors: bool, *, owned: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """A tenant's erasure as (query, params) pairs that need no client-side state (restore replay).

    `owned`: the backup holds `memory_threads`, so the tenant's threads are the ones it owns; an older
    backup's threads are found by their checkpoints' metadata."""
    from memory.tenants import tenant_params

    params = tenant_params(tenant)
    statements = [(sql.TENANT_DELETE_VECTORS, params)] if vectors else []
    statements.append((sql.TENANT_DELETE_ITEMS, params))
    if owned:
        statements.append((sql.TENANT_ERASE_OWNED_THREADS, params))
    else:
        statements += [
            (sql.TENANT_ERASE_WRITES, params),
            (sql.TENANT_ERASE_BLOBS, params),
            (sql.TENANT_ERASE_CHECKPOINTS, params),
        ]
    return statements
