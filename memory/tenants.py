"""Tenant-wide tooling: list, stats, export to a bundle, import from one, erase with a ledger entry.

A tenant's memory items are the `store` rows whose prefix is `<tenant>.<...>` (matched with an
escaped LIKE: `_` is a valid tenant character and a LIKE wildcard); its checkpoint threads are the
threads `memory_threads` says it owns (see `memory.ownership`), never a guess from metadata.

The bundle is a gzip'd tar: `manifest.json` first, then one JSON-lines file per section
(items, vectors, checkpoints, checkpoint_blobs, checkpoint_writes). The manifest holds the
format version, the tenant, the schema revision, each section's row count and sha256, and a
`binding`: the sha256 of the tenant with every section's digest, so a manifest edited to name
another tenant is refused. Item prefixes are stored without the tenant label, so `--as` only
changes the first label.

Import never writes outside its target tenant: without `--as`, a bundle whose checkpoints' metadata
names another tenant, or whose thread ids another tenant (or nobody) owns here, is refused whole.

Export and import report rows per section through `on_step(step, done, total)` ("export items",
"import checkpoints", ...); erasing reports the tables done (see `Step`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import psycopg

from memory import erasure, sql
from memory.errors import MemoryServiceError
from memory.retention import refuse_held
from memory.tenancy import validate_tenant_id

BUNDLE_FORMAT = "memory-tenant-bundle"
BUNDLE_VERSION = 1
SECTIONS = ("items", "vectors", "checkpoints", "checkpoint_blobs", "checkpoint_writes")
MODES = ("merge", "replace")
CLONE_NAMESPACE = uuid.UUID("6f1c1f9e-8f43-4c1e-9a59-4a3c2b0de5a1")
"""Clones get thread ids uuid5(CLONE_NAMESPACE, "<new tenant>/<old thread id>"): re-importing is idempotent."""

Step = Callable[[str, int, int | None], None] | None
"""`on_step(step, done, total)`: `done` of `total` units of `step` are finished (`total` None: size
unknown). A call naming another step means the previous one is over."""

PROGRESS_EVERY = 250
"""Rows between two progress reports of a section (and one at its end)."""


class TenantToolError(MemoryServiceError):
    """The tenant operation failed."""


class BundleError(TenantToolError):
    """The tenant bundle is not valid."""


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def tenant_params(tenant: str) -> dict[str, Any]:
    """Query parameters naming one tenant: `tenant` and the escaped `like` pattern of its prefixes."""
    tenant = validate_tenant_id(tenant, "tenant")
    return {"tenant": tenant, "like": escape_like(tenant) + ".%"}


def _say(on_step: Step, step: str, done: int = 0, total: int | None = None) -> None:
    if on_step is not None:
        on_step(step, done, total)


def _counted(rows: Iterable[Any], total: int, on_step: Step, step: str) -> Iterator[Any]:
    """`rows`, reporting `step` every PROGRESS_EVERY rows and once at the end, done == total."""
    _say(on_step, step, 0, total)
    done = reported = 0
    for done, row in enumerate(rows, 1):
        yield row
        if done % PROGRESS_EVERY == 0:
            _say(on_step, step, done, total)
            reported = done
    if done != reported:
        _say(on_step, step, done, total)


def _vectors_present(conn: psycopg.Connection) -> bool:
    return bool(conn.execute(sql.TENANT_VECTORS_PRESENT).fetchone()["present"])


def schema_revision(conn: psycopg.Connection) -> str | None:
    """The database's alembic revision (None when alembic never ran there)."""
    try:
        with conn.transaction():
            row = conn.execute(sql.TENANT_ALEMBIC_REVISION).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return row["version_num"] if row else None


# -- list and stats -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TenantStats:
    tenant: str
    items: int
    bytes: int
    threads: int
    checkpoints: int
    last_write: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def list_tenants(conn: psycopg.Connection) -> list[TenantStats]:
    """Every tenant holding memory items or checkpoint threads."""
    rows = conn.execute(sql.TENANT_LIST).fetchall()
    return [
        TenantStats(
            r["tenant"], r["items"], int(r["bytes"]), r["threads"], r["checkpoints"],
            _last(r["last_write"], r["last_checkpoint"]),
        )
        for r in rows
    ]


def _last(item_write: Any, checkpoint_ts: str | None) -> str | None:
    """The later of the newest item write and the newest checkpoint (both ISO 8601 UTC)."""
    return max(filter(None, [_iso(item_write), checkpoint_ts]), default=None)


def tenant_stats(conn: psycopg.Connection, tenant: str) -> TenantStats:
    params = tenant_params(tenant)
    erasure.require_tenant(conn, params)
    items = conn.execute(sql.TENANT_ITEM_STATS, params).fetchone()
    threads = conn.execute(sql.TENANT_THREAD_STATS, params).fetchone()
    last = _last(items["last_write"], threads["last_checkpoint"])
    return TenantStats(params["tenant"], items["items"], int(items["bytes"]), threads["threads"], threads["checkpoints"], last)


# -- rows to JSON and back ----------------------------------------------------------------------


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, (bytes, memoryview)):
            value = {"b64": base64.b64encode(bytes(value)).decode("ascii")}
        out[key] = value
    return out


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    return {
        key: base64.b64decode(value["b64"]) if isinstance(value, dict) and set(value) == {"b64"} else value
        for key, value in row.items()
    }


def bundle_binding(tenant: str, sections: dict[str, Any]) -> str:
    """The digest binding a bundle to its tenant: sha256 over the tenant and each section's sha256."""
    parts = [tenant] + [f"{name}:{(sections.get(name) or {}).get('sha256')}" for name in SECTIONS]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n" for row in rows)


# -- export -------------------------------------------------------------------------------------


def export_tenant(conn: psycopg.Connection, tenant: str, out: Path | BinaryIO, *, on_step: Step = None) -> dict[str, Any]:
    """Write `tenant`'s items, vectors and checkpoint threads to the bundle `out` (a path or a binary file); its manifest."""
    if not hasattr(out, "write"):
        out = Path(out)
        if out.is_dir():
            raise BundleError(f"{out} is a directory; give the bundle's file name, e.g. {out / 'tenant.bundle'}")
        if not out.parent.is_dir():
            raise BundleError(f"cannot write {out}: the directory {out.parent} does not exist")
    params = tenant_params(tenant)
    tenant = params["tenant"]
    revision = schema_revision(conn)
    sections: dict[str, list[dict[str, Any]]] = {}
    cut = len(tenant) + 1

    def unprefixed(row: dict[str, Any]) -> dict[str, Any]:
        return {**_encode(row), "prefix": row["prefix"][cut:]}

    with conn.transaction():
        conn.execute(sql.TENANT_SNAPSHOT)
        erasure.require_tenant(conn, params)
        erasures = erasure.receipts_of(conn, tenant)
        vectors = _vectors_present(conn)
        for name, query, encode in (
            ("items", sql.TENANT_EXPORT_ITEMS, unprefixed),
            ("vectors", sql.TENANT_EXPORT_VECTORS if vectors else None, unprefixed),
            ("checkpoints", sql.TENANT_EXPORT_CHECKPOINTS, _encode),
            ("checkpoint_blobs", sql.TENANT_EXPORT_BLOBS, _encode),
            ("checkpoint_writes", sql.TENANT_EXPORT_WRITES, _encode),
        ):
            sections[name] = _read_section(conn, query, params, encode, on_step, f"export {name}")
    payloads = {name: _jsonl(sections[name]) for name in SECTIONS}
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "tenant": tenant,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "schema_revision": revision,
        "threads": len({r["thread_id"] for r in sections["checkpoints"]}),
        "indexed": vectors,
        "erasures": erasures,
        "sections": {
            name: {"rows": len(sections[name]), "sha256": hashlib.sha256(payloads[name]).hexdigest()}
            for name in SECTIONS
        },
    }
    manifest["binding"] = bundle_binding(tenant, manifest["sections"])
    _say(on_step, "write the bundle")
    if hasattr(out, "write"):  # a file object: the bundle never touches the disk (single-tenant restore)
        _write_bundle(tarfile.open(fileobj=out, mode="w:gz"), manifest, payloads)
        return manifest
    partial = out.with_name(out.name + ".partial")
    try:
        _write_bundle(tarfile.open(partial, "w:gz"), manifest, payloads)
        partial.replace(out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise BundleError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return manifest


def _write_bundle(tar: tarfile.TarFile, manifest: dict[str, Any], payloads: dict[str, bytes]) -> None:
    with tar:
        for name, data in [("manifest.json", json.dumps(manifest, indent=2).encode("utf-8"))] + [
            (f"{name}.jsonl", payloads[name]) for name in SECTIONS
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(datetime.now(timezone.utc).timestamp())
            tar.addfile(info, io.BytesIO(data))


def _read_section(
    conn: psycopg.Connection, query: str | None, params: dict[str, Any], encode: Callable, on_step: Step, step: str
) -> list[dict[str, Any]]:
    """One section's rows, encoded for JSON; progress in rows (the total is known once the query ran)."""
    if query is None:
        _say(on_step, step, 0, 0)
        return []
    cursor = conn.execute(query, params)
    return [encode(row) for row in _counted(cursor, cursor.rowcount, on_step, step)]


# -- reading a bundle -----------------------------------------------------------------------------


@dataclass
class Bundle:
    manifest: dict[str, Any]
    sections: dict[str, list[dict[str, Any]]]

    @property
    def tenant(self) -> str:
        return self.manifest["tenant"]


def read_bundle(path: Path | BinaryIO) -> Bundle:
    """Open and verify a bundle (a path or a binary file): format and version, manifest first, each section's count and sha256."""
    source = path
    path = Path(path) if not hasattr(path, "read") else "the bundle"
    what = f"{path}: not a tenant bundle (a gzip'd tar with manifest.json first, from `memory tenant export`)"
    try:
        tar = tarfile.open(fileobj=source, mode="r:gz") if hasattr(source, "read") else tarfile.open(path, "r:gz")
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{what}: {exc}") from None
    with tar:
        try:
            members = tar.getmembers()
            if not members or members[0].name != "manifest.json":
                raise BundleError(f"{what}: manifest.json is not its first member")
            files = {}
            for member in members:
                if not member.isfile():
                    raise BundleError(f"{what}: unexpected member {member.name!r}")
                handle = tar.extractfile(member)
                files[member.name] = handle.read() if handle else b""
        except (tarfile.TarError, OSError, EOFError, zlib_error()) as exc:
            raise BundleError(f"{path}: the bundle is truncated or damaged ({exc})") from None
    try:
        manifest = json.loads(files["manifest.json"])
    except ValueError as exc:
        raise BundleError(f"{path}: manifest.json is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{what}: its manifest is not a {BUNDLE_FORMAT} manifest")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"{path}: bundle format version {manifest.get('version')!r} is not supported "
            f"(this release reads version {BUNDLE_VERSION}); export it again with this release"
        )
    validate_tenant_id(manifest.get("tenant"), "bundle tenant")
    declared = manifest.get("sections") or {}
    if not isinstance(declared, dict) or manifest.get("binding") != bundle_binding(manifest["tenant"], declared):
        raise BundleError(
            f"{path}: the manifest's tenant {manifest['tenant']!r} does not match the bundle's binding: the manifest "
            "was edited; export the tenant again; nothing was changed"
        )
    sections: dict[str, list[dict[str, Any]]] = {}
    for name in SECTIONS:
        data = files.get(f"{name}.jsonl")
        meta = declared.get(name)
        if data is None or not isinstance(meta, dict):
            raise BundleError(f"{path}: section {name} is missing; the bundle is incomplete")
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta.get("sha256"):
            raise BundleError(f"{path}: section {name} has sha256 {digest[:12]}…, the manifest says {str(meta.get('sha256'))[:12]}…: altered")
        try:
            rows = [_decode(json.loads(line)) for line in data.decode("utf-8").splitlines() if line]
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: section {name} is not JSON lines ({exc})") from None
        if len(rows) != meta.get("rows"):
            raise BundleError(f"{path}: section {name} has {len(rows)} rows, the manifest says {meta.get('rows')}")
        sections[name] = rows
    return Bundle(manifest, sections)


def zlib_error() -> type[BaseException]:
    import zlib

    return zlib.error


# -- erase ----------------------------------------------------------------------------------------


def _erase(
    conn: psycopg.Connection, params: dict[str, Any], vectors: bool, on_step: Step = None, step: str = "erase (tables)"
) -> dict[str, int]:
    """Delete a tenant's items, vectors and threads inside the caller's transaction; the counts.

    Progress: tables done of the tables to erase (each table is one DELETE statement)."""
    counts = {"items": 0, "vectors": 0, "threads": 0, "checkpoints": 0, "checkpoint_blobs": 0, "checkpoint_writes": 0}
    total = 6 if vectors else 5
    done: list[str] = []
    _say(on_step, step, 0, total)

    def delete(table: str, query: str, query_params: dict[str, Any]) -> None:
        counts[table] = conn.execute(query, query_params).rowcount
        done.append(table)
        _say(on_step, step, len(done), total)

    if vectors:
        delete("vectors", sql.TENANT_DELETE_VECTORS, params)
    delete("items", sql.TENANT_DELETE_ITEMS, params)
    threads = {"threads": [r["thread_id"] for r in conn.execute(sql.TENANT_THREAD_IDS, params).fetchall()]}
    delete("checkpoint_writes", sql.TENANT_DELETE_WRITES, threads)
    delete("checkpoint_blobs", sql.TENANT_DELETE_BLOBS, threads)
    delete("checkpoints", sql.TENANT_DELETE_CHECKPOINTS, threads)
    delete("threads", sql.TENANT_DELETE_THREADS, threads)
    return counts


def delete_tenant(
    conn: psycopg.Connection,
    tenant: str,
    *,
    legal_hold: Iterable[str] = (),
    on_step: Step = None,
    receipts_dir: Path | None = None,
) -> dict[str, Any]:
    """Erase a tenant in one transaction and record it in `memory_tenant_erasures`; the receipt.

    A tenant in `legal_hold` is refused (`LegalHoldError`) before anything is read or written;
    `receipts_dir` (the backup directory) also gets the receipt as a file (memory.erasure)."""
    params = tenant_params(tenant)
    refuse_held(params["tenant"], legal_hold, "tenant delete")
    with conn.transaction():
        erasure.require_tenant(conn, params)
        counts = _erase(conn, params, _vectors_present(conn), on_step, f"erase {params['tenant']} (tables)")
        row = conn.execute(
            sql.TENANT_RECORD_ERASURE, {"tenant": params["tenant"], "counts": json.dumps(counts)}
        ).fetchone()
    receipt = {"erasure_id": row["id"], "tenant": row["tenant"], "erased_at": row["erased_at"].isoformat(), "counts": row["counts"]}
    erasure.keep_receipt(receipt, receipts_dir)
    return {**receipt, "receipt": erasure.receipt_id(row["tenant"], row["erased_at"])}


# -- import ---------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    tenant: str
    source_tenant: str
    mode: str
    dry_run: bool
    removed: dict[str, int] = field(default_factory=dict)
    items_inserted: int = 0
    items_updated: int = 0
    items_kept: int = 0
    vectors: int = 0
    vectors_skipped: int = 0
    vectors_embedded: int = 0
    threads: int = 0
    checkpoints_inserted: int = 0
    blobs_inserted: int = 0
    writes_inserted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _DryRun(Exception):
    pass


def _bundle_thread_ids(bundle: Bundle) -> set[str]:
    return {row["thread_id"] for name in SECTIONS[2:] for row in bundle.sections[name]}


def _refuse_foreign_metadata(bundle: Bundle, path: Path) -> None:
    """Every checkpoint of a bundle imported as itself names its tenant, or no tenant."""
    for row in bundle.sections["checkpoints"]:
        try:
            named = json.loads(row["metadata"]).get("assistant_id")
        except (TypeError, ValueError, AttributeError):
            raise BundleError(f"{path}: a checkpoint of thread {row['thread_id']!r} has metadata that is not a JSON object") from None
        if named is not None and named != bundle.tenant:
            raise BundleError(
                f"{path}: a checkpoint of thread {row['thread_id']!r} names another tenant than the bundle's "
                f"({bundle.tenant!r}): refused; nothing was written"
            )


def _bundle_indexed(bundle: Bundle) -> bool:
    """Whether the bundle's database kept vectors (bundles before the `indexed` key: it has some)."""
    return bool(bundle.manifest.get("indexed", bundle.manifest["sections"]["vectors"]["rows"] > 0))


def _embed_items(
    conn: psycopg.Connection, bundle: Bundle, target: str, written: set[tuple[str, str]],
    embed: Callable[[dict[str, Any]], dict[str, Any]], on_step: Step,
) -> int:
    """Vectors for the written items of a bundle that carried none; how many rows were written."""
    count = 0
    for row in _counted(bundle.sections["items"], len(bundle.sections["items"]), on_step, "embed items"):
        prefix = f"{target}.{row['prefix']}"
        if (prefix, row["key"]) not in written:
            continue
        params = embed(json.loads(row["value"]))
        for field_name, embedding in zip(params["fields"], params["embeddings"], strict=True):
            conn.execute(sql.TENANT_IMPORT_VECTOR, {
                "prefix": prefix, "key": row["key"], "field_name": field_name, "embedding": embedding,
                "created_at": row["created_at"], "updated_at": row["updated_at"],
            })
            count += 1
    return count


def _claim_threads(conn: psycopg.Connection, bundle: Bundle, target: str, thread: Callable[[str], str], path: Path) -> None:
    """Own every (remapped) thread of the bundle for `target`, refusing threads owned by anyone else."""
    threads = sorted({thread(old) for old in _bundle_thread_ids(bundle)})
    for row in conn.execute(sql.TENANT_THREAD_OWNERS, {"threads": threads}).fetchall():
        if row["tenant"] != target:
            raise BundleError(
                f"{path}: thread {row['thread_id']!r} of the bundle belongs to another tenant here: refused; import it "
                "as a clone with --as NEW_TENANT (new thread ids); nothing was written"
            )
    conn.execute(sql.TENANT_CLAIM_THREADS, {"threads": threads, "tenant": target})


def import_tenant(
    conn: psycopg.Connection,
    path: Path | BinaryIO,
    *,
    as_tenant: str | None = None,
    mode: str = "merge",
    dry_run: bool = False,
    legal_hold: Iterable[str] = (),
    embed: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    on_step: Step = None,
) -> ImportReport:
    """Import a bundle in one transaction (rolled back for a dry run); other tenants are never touched.

    Without `as_tenant` every checkpoint's metadata must name the bundle's tenant (or none) and each
    thread id must be unowned here or owned by it; `--mode replace` of a held tenant is refused.
    `embed` (`vectors.embed_value` bound to an indexed store) embeds the items of a bundle exported
    from a database without vectors, so they are found by semantic search here too."""
    if mode not in MODES:
        raise TenantToolError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
    _say(on_step, "verify the bundle")
    bundle = read_bundle(path)
    source = bundle.tenant
    target = validate_tenant_id(as_tenant, "--as") if as_tenant is not None else source
    revision = schema_revision(conn)
    if bundle.manifest.get("schema_revision") != revision:
        raise BundleError(
            f"{path}: exported at schema revision {bundle.manifest.get('schema_revision')}, this database is at "
            f"{revision}; bring both to the same revision (`memory db upgrade`) and export again; nothing was changed"
        )
    params = tenant_params(target)
    erasure.refuse_erased_bundle(conn, path, bundle.manifest, target)
    clone = target != source
    if mode == "replace":
        refuse_held(target, legal_hold, "import --mode replace")
    if not clone:
        _refuse_foreign_metadata(bundle, path)

    def thread(old: str) -> str:
        return str(uuid.uuid5(CLONE_NAMESPACE, f"{target}/{old}")) if clone else old

    def metadata(text: str, old_thread: str) -> str:
        data = json.loads(text)
        if clone:
            data["assistant_id"] = target
            if data.get("thread_id") == old_thread:
                data["thread_id"] = thread(old_thread)
        return json.dumps(data)

    def rows(section: str) -> Iterator[dict[str, Any]]:
        return _counted(bundle.sections[section], len(bundle.sections[section]), on_step, f"import {section}")

    report = ImportReport(target, source, mode, dry_run)
    try:
        with conn.transaction():
            vectors_here = _vectors_present(conn)
            if mode == "replace":
                report.removed = _erase(conn, params, vectors_here, on_step, f"remove {target}'s data first (tables)")
            written: set[tuple[str, str]] = set()
            for row in rows("items"):
                item = {**row, "prefix": f"{target}.{row['prefix']}"}
                result = conn.execute(sql.TENANT_IMPORT_ITEM, item).fetchone()
                if result is None:
                    report.items_kept += 1
                    continue
                written.add((item["prefix"], item["key"]))
                if result["inserted"]:
                    report.items_inserted += 1
                else:
                    report.items_updated += 1
                if vectors_here:
                    conn.execute(sql.TENANT_IMPORT_DROP_VECTORS, item)
            for row in rows("vectors"):
                vector = {**row, "prefix": f"{target}.{row['prefix']}"}
                if (vector["prefix"], vector["key"]) not in written:
                    continue
                if not vectors_here:
                    report.vectors_skipped += 1
                    continue
                conn.execute(sql.TENANT_IMPORT_VECTOR, vector)
                report.vectors += 1
            if vectors_here and embed is not None and not _bundle_indexed(bundle):
                report.vectors_embedded = _embed_items(conn, bundle, target, written, embed, on_step)
            report.threads = len({r["thread_id"] for r in bundle.sections["checkpoints"]})
            _claim_threads(conn, bundle, target, thread, path)
            for row in rows("checkpoints"):
                cp = {**row, "thread_id": thread(row["thread_id"]), "metadata": metadata(row["metadata"], row["thread_id"])}
                report.checkpoints_inserted += conn.execute(sql.TENANT_IMPORT_CHECKPOINT, cp).rowcount
            for row in rows("checkpoint_blobs"):
                report.blobs_inserted += conn.execute(sql.TENANT_IMPORT_BLOB, {**row, "thread_id": thread(row["thread_id"])}).rowcount
            for row in rows("checkpoint_writes"):
                report.writes_inserted += conn.execute(sql.TENANT_IMPORT_WRITE, {**row, "thread_id": thread(row["thread_id"])}).rowcount
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return report
