"""Backups of the service's tables: `pg_dump -Fc` plus a JSON manifest beside it; verify; restore.

A backup is two files in the backup directory:
    memory-20261121T020000Z.dump   pg_dump's custom format, the service's tables only
    memory-20261121T020000Z.json   the manifest: server version, schema revision, row counts, sha256

Row counts and the dump come from one exported snapshot, so they agree exactly; `created_at` is
the snapshot's time on the server (the clock `memory_tenant_erasures.erased_at` uses too).

A restore never leaves the target half-done: the archive is verified first, then turned into a
script (`pg_restore -f`) that psql runs in ONE transaction together with a prelude (drop the
service's tables) and a postlude (keep the target's erasure ledger, and erase again every tenant
erased after the backup was taken). Any error rolls the whole transaction back. Then the schema
is migrated to head. A backup taken before the ledger table existed (no `memory_tenant_erasures`
in it) cannot take the target's ledger rows inside that transaction, since the migration creates
the table afterwards: those rows are written right after the migration, and if the migration
fails the error names them.

Long steps report progress through `on_step(step, done, total)` (see `Step`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from memory import sql
from memory.db import CONNECT_TIMEOUT_S, describe_url, unavailable
from memory.errors import MemoryServiceError
from memory.pgtools import PgTool, find_tool, sibling

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
            manifest = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k != "path"})
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


def _run(tool: PgTool | str, args: list[str], what: str) -> subprocess.CompletedProcess:
    command = [str(tool.path if isinstance(tool, PgTool) else tool), *args]
    env = {**os.environ, "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S)}
    done = subprocess.run(command, capture_output=True, env=env)
    if done.returncode != 0:
        raise BackupError(f"{what}: {_first_error(done.stderr)}")
    return done


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
        counts = _count_rows(conn, tables, on_step)
        revision = _schema_revision(conn, tables)
        created = snap["now"].astimezone(timezone.utc)
        stem = f"{PREFIX}{created.strftime('%Y%m%dT%H%M%S%fZ')}"
        archive = out_dir / f"{stem}{ARCHIVE_SUFFIX}"
        partial = archive.with_name(archive.name + ".partial")
        args = ["--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snap['snapshot']}", "-f", str(partial)]
        for t in tables:
            args += ["-t", f'"{schema}"."{t}"']
        args.append(f"--dbname={url}")
        _say(on_step, f"pg_dump -Fc of {len(tables)} tables ({sum(counts.values()):,} rows)")
        try:
            _run(pg_dump, args, f"pg_dump of {describe_url(url)} failed")
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        conn.rollback()
    partial.rename(archive)
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


def verify_backup(path: Path, pg_restore: PgTool | None = None, on_step: Step = None) -> BackupManifest:
    """Checksum, `pg_restore --list`, every manifest table present; one `BackupError` line otherwise."""
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
    listing = _run(tool, ["--list", str(archive)], f"{archive.name}: pg_restore cannot read the archive").stdout
    listed = set()
    for line in listing.decode("utf-8", "replace").splitlines():
        parts = line.split()
        # "216; 0 16390 TABLE DATA public store postgres"
        if "TABLE" in parts and "DATA" in parts:
            i = parts.index("DATA")
            if len(parts) > i + 2:
                listed.add(parts[i + 2])
    missing = sorted(set(manifest.tables) - listed)
    if missing:
        raise BackupError(f"{archive.name}: tables {', '.join(missing)} are in the manifest but not in the archive")
    return manifest


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
) -> RestoreReport:
    """Restore the backup at `path` into `target_url` in one transaction, then migrate to head.

    Refuses a target holding data unless `force`. The target's erasure ledger survives, and every
    tenant erased after the backup was taken is erased again, so a restore never resurrects it.
    `upgrade(url)` migrates afterwards (default: `memory.migrations.upgrade` in the backup's schema).
    """
    manifest = verify_backup(path, on_step=on_step)
    archive = manifest.path
    assert archive is not None
    where = describe_url(target_url)
    with _connect(target_url, autocommit=True) as conn:
        server_major = conn.info.server_version // 10000
        schema = target_schema(conn)
        if schema != manifest.schema:
            raise BackupError(
                f"the backup holds schema {manifest.schema!r} but {where} uses {schema!r}; "
                f"set [database] schema = {manifest.schema!r} for the restore; nothing was changed"
            )
        existing = present_tables(conn, schema=schema)
        nonempty = _target_has_rows(conn, existing)
        if nonempty and not force:
            raise BackupError(
                f"{where} is not empty ({', '.join(nonempty)} hold rows); pass --force to replace its data; nothing was changed"
            )
        ledger = conn.execute(sql.ERASURES_ALL).fetchall() if "memory_tenant_erasures" in existing else []
        pg_restore = find_tool("pg_restore", max(server_major, manifest.archive_major))
        psql = sibling(pg_restore, "psql")
        cur = psycopg.ClientCursor(conn)
        search_path = f"{pgsql.Identifier(schema).as_string(conn)}, public"
        prelude = [_render(cur, sql.RESTORE_SEARCH_PATH, {"path": search_path})]
        if schema != "public":
            prelude.append(_render(cur, pgsql.SQL(sql.RESTORE_CREATE_SCHEMA).format(schema=pgsql.Identifier(schema))))
        if "store_vectors" in manifest.tables:
            prelude.append(_render(cur, sql.RESTORE_CREATE_VECTOR))
        for t in SERVICE_TABLES:
            prelude.append(
                _render(cur, pgsql.SQL(sql.RESTORE_DROP_TABLE).format(table=pgsql.Identifier(schema, t)))
            )
        postlude = [_render(cur, sql.RESTORE_SEARCH_PATH, {"path": search_path})]
        ledger_in_backup = "memory_tenant_erasures" in manifest.tables
        if ledger_in_backup:
            postlude.extend(_render(cur, sql.RESTORE_KEEP_ERASURE, _erasure_params(row)) for row in ledger)
        replayed = _erased_since(ledger, manifest.created)
        for tenant in replayed:
            postlude.extend(_render(cur, q, p) for q, p in erase_statements(
                tenant, "store_vectors" in manifest.tables, owned="memory_threads" in manifest.tables))

    with tempfile.TemporaryDirectory(prefix="memory-restore-") as tmp:
        script = Path(tmp) / "restore.sql"
        _say(on_step, "pg_restore to a script")
        _run(
            pg_restore,
            ["--no-owner", "--no-privileges", "-f", str(script), str(archive)],
            f"{archive.name}: pg_restore cannot read the archive; {where} was not changed",
        )
        if server_major < 17:
            _drop_newer_settings(script)
        (Path(tmp) / "prelude.sql").write_text("".join(prelude), encoding="utf-8")
        (Path(tmp) / "postlude.sql").write_text("".join(postlude), encoding="utf-8")
        _say(on_step, f"restore {sum(manifest.tables.values()):,} rows (one transaction)")
        _run(
            psql,
            [
                "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                "-f", str(Path(tmp) / "prelude.sql"), "-f", str(script), "-f", str(Path(tmp) / "postlude.sql"),
                f"--dbname={target_url}",
            ],
            f"restore into {where} failed and was rolled back, the target is unchanged",
        )
    _say(on_step, "migrate to head")
    try:
        revision = _migrate(target_url, schema, upgrade, manifest.schema_revision)
    except MemoryServiceError as exc:
        if ledger and not ledger_in_backup:
            raise _ledger_not_kept(exc, ledger) from exc
        raise
    if ledger and not ledger_in_backup:
        _say(on_step, "keep the target's erasure ledger")
        _keep_erasures(target_url, ledger)
    return RestoreReport(
        file=archive.name,
        target=where,
        created_at=manifest.created_at,
        tables=manifest.tables,
        erasures_kept=len(ledger),
        erasures_replayed=replayed,
        schema_revision=revision,
    )


def _erasure_params(row: dict[str, Any]) -> dict[str, Any]:
    return {"tenant": row["tenant"], "erased_at": row["erased_at"], "counts": json.dumps(row["counts"])}


def _erased_since(ledger: list[dict[str, Any]], taken: datetime) -> list[str]:
    """Tenants the ledger says were erased after the backup was taken, in erasure order."""
    tenants: list[str] = []
    for row in ledger:
        if row["erased_at"] > taken and row["tenant"] not in tenants:
            tenants.append(row["tenant"])
    return tenants


def _migrate(url: str, schema: str, upgrade: Callable[[str], Any] | None, fallback: str | None) -> str | None:
    """Migrate to head; the revision reached."""
    if upgrade is None:
        from memory import migrations

        return migrations.upgrade(url, schema=schema).revision
    return getattr(upgrade(url), "revision", fallback)


def _keep_erasures(url: str, ledger: list[dict[str, Any]]) -> None:
    """Write the target's ledger rows back (after the migration created the table), in one transaction."""
    with _connect(url) as conn, conn.transaction():
        for row in ledger:
            conn.execute(sql.RESTORE_KEEP_ERASURE, _erasure_params(row))


def _ledger_not_kept(exc: BaseException, ledger: list[dict[str, Any]]) -> BackupError:
    tenants = sorted({row["tenant"] for row in ledger})
    return BackupError(
        f"{exc}; the restore was committed but, without the migration, the target's erasure ledger could not be "
        f"written back: once `memory db upgrade` succeeds, run `memory tenant delete T --yes` for each of "
        f"{', '.join(tenants)} to record their erasures again"
    )


NEWER_SETTINGS = (b"SET transaction_timeout = 0;",)
"""Lines a PG 17+ pg_restore writes that older servers reject (the setting does not exist there)."""


def _drop_newer_settings(script: Path) -> None:
    kept = script.with_suffix(".kept.sql")
    with open(script, "rb") as src, open(kept, "wb") as dst:
        for line in src:
            if line.rstrip(b"\r\n") not in NEWER_SETTINGS:
                dst.write(line)
    kept.replace(script)


def erase_statements(tenant: str, vectors: bool, *, owned: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """A tenant's erasure as (query, params) pairs that need no client-side state (restore replay).

    `owned`: the backup holds `memory_threads`, so the tenant's threads are the ones it owns (the
    foreign keys cascade); an older backup's threads are found by their checkpoints' metadata."""
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


# -- the scheduled job ------------------------------------------------------------------------

BACKUP_JOB = "backup"
"""The job's name in `memory_job_runs` and `[schedule] backup`."""


def backup_job(
    conn: psycopg.Connection,
    url: str,
    out_dir: Path,
    keep: int,
    *,
    dry_run: bool = False,
    tenant: str | None = None,
    stop: Any = None,
    on_batch: Any = None,
):
    """One backup under the job's advisory lock, recorded in `memory_job_runs`, pruned to `keep`.

    `conn` is an autocommit connection to the same database as `url` (pg_dump needs the URL).
    A dry run takes no backup; it counts the backups a real run would prune.
    """
    from jobs import runs

    if tenant is not None:
        raise ValueError("a backup holds every tenant; --tenant does not apply (use `memory tenant export T -o FILE`)")
    with runs.recorded_run(conn, BACKUP_JOB, dry_run=dry_run) as report:
        if dry_run:
            report.counts["would_prune"] = max(0, len(list_backups(out_dir)) + 1 - keep)
            return report
        manifest = create_backup(url, out_dir)
        report.counts.update(
            {"tables": len(manifest.tables), "rows": sum(manifest.tables.values()), "bytes": manifest.size,
             "pruned": len(prune(out_dir, keep))}
        )
    return report
