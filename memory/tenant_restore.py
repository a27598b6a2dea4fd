"""Restore one tenant from a full backup, leaving every other tenant exactly as it is now.

`memory backup restore FILE --tenant T [--as T2]` reuses what is there, no second code path:
1. verify the archive (memory.backup.verify_archive); refuse T under its own name when an erasure
   of T is missing from the archive's ledger (memory.erasure: an erased tenant stays erased);
2. `pg_restore -d` the archive's tables and rows (no indexes: the export reads one tenant) into a
   scratch database `memory_scratch_<key>` on the same server;
3. export T there with `memory.tenants.export_tenant` into memory (the bundle never touches disk);
4. show the counts and ask (`confirm`), then import it into the live database with
   `memory.tenants.import_tenant` in replace mode: ONE transaction that removes T's current rows
   (those written since the backup included) and writes the backup's; other tenants untouched.

The scratch database is dropped on every exit. While it exists, its restore holds the advisory
lock (SCRATCH_LOCK_SPACE, key) on a connection of its own; a scratch database whose lock nobody
holds belongs to a restore that died (kill -9 included) and the next single-tenant restore drops
it first (`sweep_scratch`). Client programs die with this process (memory.backup.spawn).
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql

from memory import erasure, sql, tenants
from memory.backup import Step, _connect, _say, stream_restore, target_schema, verify_archive
from memory.db import describe_url, with_dbname
from memory.errors import MemoryServiceError
from memory.pgtools import find_tool, sibling

SCRATCH_PREFIX = "memory_scratch_"
SCRATCH_LOCK_SPACE = 0x4D454D53
"""First key of the scratch databases' advisory locks ("MEMS"); the second is the scratch's key."""


class TenantRestoreError(MemoryServiceError):
    """The single-tenant restore failed; the live database was not changed."""


@dataclass
class TenantRestorePlan:
    """What the restore would do: the backup's rows of the tenant against what it holds now."""

    file: str
    tenant: str
    target: str
    created_at: str
    backup: dict[str, int]
    current: dict[str, int]
    dry_run: bool = False
    imported: dict[str, Any] | None = None
    swept: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        b, c = self.backup, self.current
        source = self.tenant if self.target == self.tenant else f"{self.tenant} (as {self.target})"
        return (
            f"{source} from {self.file} (taken {self.created_at[:19]}): {b['items']} items, {b['vectors']} vectors, "
            f"{b['threads']} threads ({b['checkpoints']} checkpoints) replace what {self.target} holds now: "
            f"{c['items']} items, {c['threads']} threads ({c['checkpoints']} checkpoints), including everything "
            f"written since the backup; other tenants are not touched"
        )


# -- scratch databases ------------------------------------------------------------------------------


def _scratch_key(name: str) -> int | None:
    suffix = name[len(SCRATCH_PREFIX):]
    return int(suffix) if name.startswith(SCRATCH_PREFIX) and suffix.isdigit() else None


def scratch_databases(conn: psycopg.Connection) -> list[str]:
    return [row["datname"] for row in conn.execute(sql.SCRATCH_DATABASES).fetchall()]


def sweep_scratch(conn: psycopg.Connection) -> list[str]:
    """Drop the scratch databases whose restore is gone (nobody holds their lock); their names."""
    dropped = []
    for name in scratch_databases(conn):
        key = _scratch_key(name)
        if key is None:
            continue
        if conn.execute(sql.SCRATCH_HELD, {"space": SCRATCH_LOCK_SPACE, "key": key}).fetchone()["held"]:
            continue
        conn.execute(pgsql.SQL(sql.SCRATCH_DROP).format(name=pgsql.Identifier(name)))
        dropped.append(name)
    return dropped


@contextmanager
def scratch_database(conn: psycopg.Connection, url: str) -> Iterator[str]:
    """A new empty database next to `url`'s, dropped on exit; `conn` (autocommit) holds its lock meanwhile."""
    key = secrets.randbelow(2**31 - 2) + 1
    name = f"{SCRATCH_PREFIX}{key}"
    params = {"space": SCRATCH_LOCK_SPACE, "key": key}
    if not conn.execute(sql.SCRATCH_LOCK, params).fetchone()["locked"]:
        raise TenantRestoreError(f"scratch key {key} is in use; run the restore again")
    try:
        try:
            conn.execute(pgsql.SQL(sql.SCRATCH_CREATE).format(name=pgsql.Identifier(name)))
        except psycopg.Error as exc:
            raise TenantRestoreError(
                f"cannot create the scratch database {name} on {describe_url(url)} ({' '.join(str(exc).split())}); "
                "a single-tenant restore needs the CREATEDB privilege; nothing was changed"
            ) from exc
        try:
            yield with_dbname(url, name)
        finally:
            _quietly(conn, pgsql.SQL(sql.SCRATCH_DROP).format(name=pgsql.Identifier(name)))
    finally:
        _quietly(conn, sql.SCRATCH_UNLOCK, params)


def _quietly(conn: psycopg.Connection, query: Any, params: dict[str, Any] | None = None) -> None:
    """A cleanup step; if the connection is unusable (interrupted), the next restore's sweep does it."""
    try:
        conn.execute(query, params)
    except psycopg.Error:
        pass


def _load_scratch(scratch_url: str, archive: Path, facts: Any, server_major: int, archive_major: int) -> None:
    """The archive's tables and rows into the scratch database (pre-data and data: no indexes needed).

    Streamed like a full restore (memory.backup.stream_restore): no file, children die with us."""
    head = []
    if facts.schema and facts.schema != "public":
        head.append(pgsql.SQL(sql.RESTORE_CREATE_SCHEMA).format(schema=pgsql.Identifier(facts.schema)).as_string(None))
    if "store_vectors" in facts.tables:
        head.append(sql.RESTORE_CREATE_VECTOR)
    pg_restore = find_tool("pg_restore", max(server_major, archive_major))
    stream_restore(
        pg_restore, sibling(pg_restore, "psql"), archive, scratch_url,
        head="".join(f"{q};\n" for q in head).encode("utf-8"), tail=b"",
        drop_newer_settings=server_major < 17, where="the scratch database",
        restore_args=["--section=pre-data", "--section=data"],
    )


# -- the restore ----------------------------------------------------------------------------------------


def _current(conn: psycopg.Connection, tenant: str) -> dict[str, int]:
    try:
        s = tenants.tenant_stats(conn, tenant)
    except erasure.NoSuchTenant:
        return {"items": 0, "threads": 0, "checkpoints": 0}
    return {"items": s.items, "threads": s.threads, "checkpoints": s.checkpoints}


def restore_tenant(
    path: Path,
    url: str,
    tenant: str,
    *,
    as_tenant: str | None = None,
    dry_run: bool = False,
    confirm: Callable[[TenantRestorePlan], bool] | None = None,
    receipts_dirs: Iterable[Path] | None = None,
    on_step: Step = None,
) -> TenantRestorePlan:
    """Put `tenant`'s items, vectors and threads back to their state in the backup at `path` (see the module doc).

    `url` is the live database (with its schema on the search_path). `confirm(plan)` is asked
    before anything changes (None: no question); False cancels. A dry run changes nothing.
    """
    tenant = tenants.tenant_params(tenant)["tenant"]
    target = tenants.tenant_params(as_tenant)["tenant"] if as_tenant is not None else tenant
    manifest, facts = verify_archive(path, on_step=on_step)
    archive = manifest.path
    assert archive is not None
    dirs = [archive.parent] if receipts_dirs is None else list(receipts_dirs)
    with _connect(url, autocommit=True) as live:
        swept = sweep_scratch(live)
        server_major = live.info.server_version // 10000
        schema = target_schema(live)
        if facts.schema and schema != facts.schema:
            raise TenantRestoreError(
                f"the backup holds schema {facts.schema!r} but {describe_url(url)} uses {schema!r}; nothing was changed"
            )
        if target == tenant:
            known = erasure.merged(erasure.ledger(live, tenant), [e for e in erasure.read_receipts(dirs) if e.tenant == tenant])
            missing = erasure.unseen(known, facts.ledger or [])
            if missing:
                raise erasure.ErasedTenant(
                    f"{tenant} was erased after {archive.name} was taken ({missing[-1].describe()}): an erased tenant "
                    f"cannot be restored under its own name; restore it under another name with --as NAME; nothing was changed"
                )
        bundle = io.BytesIO()
        with scratch_database(live, url) as scratch_url:
            _say(on_step, "pg_restore into a scratch database")
            _load_scratch(scratch_url, archive, facts, server_major, manifest.archive_major)
            with _connect(scratch_url) as scratch:
                if tenants.schema_revision(scratch) != tenants.schema_revision(live):
                    _say(on_step, "migrate the scratch database")
                    from memory import migrations

                    migrations.upgrade(scratch_url, schema=schema)
                try:
                    exported = tenants.export_tenant(scratch, tenant, bundle, on_step=on_step)
                except erasure.NoSuchTenant:
                    raise erasure.NoSuchTenant(f"no such tenant in {archive.name}: {tenant}; nothing was changed") from None
            rows = {name: meta["rows"] for name, meta in exported["sections"].items()}
            plan = TenantRestorePlan(
                file=archive.name,
                tenant=tenant,
                target=target,
                created_at=manifest.created_at,
                backup={"items": rows["items"], "vectors": rows["vectors"], "threads": exported["threads"],
                        "checkpoints": rows["checkpoints"], "checkpoint_blobs": rows["checkpoint_blobs"],
                        "checkpoint_writes": rows["checkpoint_writes"]},
                current=_current(live, target),
                dry_run=dry_run,
                swept=swept,
            )
    if dry_run:
        return plan
    if confirm is not None and not confirm(plan):
        raise TenantRestoreError("cancelled; nothing was changed")
    bundle.seek(0)
    with _connect(url) as conn:
        report = tenants.import_tenant(
            conn, bundle, as_tenant=None if target == tenant else target, mode="replace", on_step=on_step
        )
    plan.imported = report.to_dict()
    return plan
