"""Erasures that nothing brings back: the ledger, its receipts beside the backups, and the checks.

An erasure (`memory tenant delete`) deletes a tenant's rows and writes one ledger row
(`memory_tenant_erasures`: tenant, erased_at, counts) in the SAME transaction. Its receipt id is
derived from the row (uuid5 of tenant and erased_at), so the same erasure has the same receipt in
every copy of the ledger: the database, a backup's archive, a bundle's manifest, a receipt file.

Ordering against backups is the database's, never a clock's: a backup's archive holds the ledger
as its snapshot saw it, so an erasure is in the archive's ledger exactly when the archive no
longer holds the erased rows. A restore erases again every known erasure missing from the
archive's own ledger, whatever the manifest or any timestamp says (a backup taken while an erase
was running does not hold its ledger row, and so gets it replayed).

Receipts are also kept as files (`erasure-<receipt>.json`, mode 0600) in the backup directory,
written when a tenant is erased and by every backup, so that a restore into a fresh database
still knows every erasure the backup set knows of.

A bundle (`memory tenant export`) lists the receipts of its tenant visible to its snapshot: an
import under the same name of a bundle missing one of the tenant's erasures is refused.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from memory import sql
from memory.errors import MemoryServiceError, TenantError

RECEIPT_FORMAT = "memory-erasure-receipt"
RECEIPT_PREFIX = "erasure-"
RECEIPT_SUFFIX = ".json"
RECEIPT_NAMESPACE = uuid.UUID("2f0b7d3e-51a4-4c8e-b7a9-0d6c3e1f9a52")
"""Receipt ids are uuid5(RECEIPT_NAMESPACE, "<tenant>/<erased_at as UTC isoformat>")."""

LEDGER_TABLE = "memory_tenant_erasures"


class ErasureError(MemoryServiceError):
    """The erasure ledger refused the operation."""


class NoSuchTenant(TenantError):
    """No such tenant."""


class ErasedTenant(ErasureError):
    """The data predates the tenant's erasure; nothing was changed."""


@dataclass(frozen=True)
class Erasure:
    """One ledger row; `receipt` names it everywhere."""

    tenant: str
    erased_at: datetime
    counts: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def receipt(self) -> str:
        return receipt_id(self.tenant, self.erased_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECEIPT_FORMAT,
            "receipt": self.receipt,
            "tenant": self.tenant,
            "erased_at": self.erased_at.astimezone(timezone.utc).isoformat(),
            "counts": self.counts,
        }

    def describe(self) -> str:
        return f"receipt {self.receipt}, {self.tenant} erased {self.erased_at.astimezone(timezone.utc).isoformat()}"

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Erasure:
        counts = row.get("counts") or {}
        if isinstance(counts, str):
            counts = json.loads(counts)
        erased_at = row["erased_at"]
        if isinstance(erased_at, str):
            erased_at = datetime.fromisoformat(erased_at)
        return cls(row["tenant"], erased_at, counts)


def receipt_id(tenant: str, erased_at: datetime) -> str:
    return str(uuid.uuid5(RECEIPT_NAMESPACE, f"{tenant}/{erased_at.astimezone(timezone.utc).isoformat()}"))


# -- the ledger in a database ------------------------------------------------------------------


def ledger(conn: psycopg.Connection, tenant: str | None = None) -> list[Erasure]:
    """The database's erasures (of `tenant` only when given), oldest first; [] without a ledger table."""
    if not conn.execute(sql.ERASURE_LEDGER_PRESENT).fetchone()["present"]:
        return []
    rows = conn.execute(sql.ERASURE_LEDGER, {"tenant": tenant}).fetchall()
    return [Erasure.from_row(row) for row in rows]


def receipts_of(conn: psycopg.Connection, tenant: str) -> list[str]:
    """Receipts of `tenant`'s erasures visible to the connection's snapshot (a bundle records them)."""
    return [e.receipt for e in ledger(conn, tenant)]


def tenant_exists(conn: psycopg.Connection, params: dict[str, Any]) -> bool:
    """Whether the tenant holds memory items or checkpoint threads (`params` from tenants.tenant_params)."""
    return bool(conn.execute(sql.ERASURE_TENANT_EXISTS, params).fetchone()["present"])


def require_tenant(conn: psycopg.Connection, params: dict[str, Any]) -> None:
    """`NoSuchTenant("no such tenant: T")` unless the tenant holds data; nothing is written either way."""
    if not tenant_exists(conn, params):
        raise NoSuchTenant(f"no such tenant: {params['tenant']}")


# -- receipt files beside the backups ------------------------------------------------------------


def receipt_path(directory: Path, receipt: str) -> Path:
    return Path(directory) / f"{RECEIPT_PREFIX}{receipt}{RECEIPT_SUFFIX}"


def write_receipt(erasure: Erasure, directory: Path) -> Path:
    """Write `erasure`'s receipt file (0600, atomically) unless it is there; its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = receipt_path(directory, erasure.receipt)
    if path.is_file():
        return path
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(erasure.to_dict(), indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    partial.replace(path)
    return path


def keep_receipt(receipt: dict[str, Any], directory: Path | None) -> None:
    """After `tenants.delete_tenant` committed: its receipt as a file in `directory` (None: not kept)."""
    if directory is None:
        return
    try:
        write_receipt(Erasure.from_row(receipt), directory)
    except OSError as exc:
        raise ErasureError(
            f"{receipt['tenant']} was erased and its receipt is in the database, but the receipt file could not be "
            f"written to {directory} ({exc}); the next `memory backup create` writes it"
        ) from exc


def sync_receipts(erasures: Iterable[Erasure], directory: Path) -> int:
    """Write the receipt files missing from `directory`; how many were written."""
    written = 0
    for erasure in erasures:
        if not receipt_path(directory, erasure.receipt).is_file():
            write_receipt(erasure, directory)
            written += 1
    return written


def read_receipts(directories: Iterable[Path]) -> list[Erasure]:
    """Receipts found in `directories`; a damaged file is an error (it may be the only copy)."""
    found = []
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob(f"{RECEIPT_PREFIX}*{RECEIPT_SUFFIX}")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("format") != RECEIPT_FORMAT:
                    raise ValueError(f"format is {data.get('format')!r}")
                erasure = Erasure.from_row(data)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ErasureError(f"{path}: not a readable erasure receipt ({exc}); restore it from a copy or remove it") from None
            if erasure.receipt != data.get("receipt"):
                raise ErasureError(f"{path}: its receipt id does not match its tenant and time; the file was altered")
            found.append(erasure)
    return found


def merged(*sources: Iterable[Erasure]) -> list[Erasure]:
    """Every erasure once (by receipt), oldest first."""
    seen: dict[str, Erasure] = {}
    for source in sources:
        for erasure in source:
            seen.setdefault(erasure.receipt, erasure)
    return sorted(seen.values(), key=lambda e: (e.erased_at, e.tenant))


def unseen(known: Iterable[Erasure], seen: Iterable[Erasure]) -> list[Erasure]:
    """The erasures of `known` that `seen` (e.g. an archive's ledger) does not hold."""
    have = {e.receipt for e in seen}
    return [e for e in known if e.receipt not in have]


# -- an archive's ledger (COPY text from pg_restore) ------------------------------------------------


def parse_copy(text: str, table: str) -> list[dict[str, str | None]]:
    """Rows of `table`'s `COPY ... FROM stdin;` block in pg_restore's plain output (text format)."""
    rows: list[dict[str, str | None]] = []
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("COPY ") and line.split(" (")[0].split(".")[-1].strip('"') == table:
            columns = [c.strip().strip('"') for c in line[line.index("(") + 1 : line.index(")")].split(",")]
            for data in lines:
                if data == "\\.":
                    break
                rows.append(dict(zip(columns, (_unescape(v) for v in data.split("\t")))))
    return rows


_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _unescape(value: str) -> str | None:
    if value == "\\N":
        return None
    if "\\" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            if nxt in "01234567":
                octal = nxt
                for c in value[i + 2 : i + 4]:
                    if c not in "01234567":
                        break
                    octal += c
                out.append(chr(int(octal, 8)))
                i += 1 + len(octal)
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def ledger_from_copy(text: str) -> list[Erasure]:
    return [Erasure.from_row(row) for row in parse_copy(text, LEDGER_TABLE)]


# -- imports ----------------------------------------------------------------------------------------


def refuse_erased_bundle(conn: psycopg.Connection, path: Any, manifest: dict[str, Any], target: str) -> None:
    """Refuse a bundle of `target` itself that predates one of `target`'s erasures (see the module doc)."""
    if manifest.get("tenant") != target:
        return
    path = "the bundle" if hasattr(path, "read") else path
    seen = set(manifest.get("erasures") or [])
    missing = [e for e in ledger(conn, target) if e.receipt not in seen]
    if missing:
        latest = missing[-1]
        raise ErasedTenant(
            f"{path}: exported before {target}'s erasure ({latest.describe()}); importing it would bring erased data "
            f"back, so nothing was changed; to bring the content back on purpose, import it under another name with --as NAME"
        )


# -- schema downgrades -------------------------------------------------------------------------------


def guard_downgrade(bind: Any, revision: str) -> None:
    """From a revision's downgrade(): refuse to drop (or strip) a ledger that holds receipts."""
    present = bind.exec_driver_sql(sql.ERASURE_LEDGER_PRESENT).first()[0]
    count = bind.exec_driver_sql(sql.ERASURE_LEDGER_COUNT).first()[0] if present else 0
    if count:
        raise ErasureError(
            f"the erasure ledger holds {count} receipt(s); downgrading below {revision} would drop it and let erased "
            f"tenants come back on the next restore; nothing was changed (stay at {revision} or later)"
        )
