"""Backups and tenant export at size.

`backup_create_vs_pg_dump`: `create_backup()` (what `memory backup create` runs: row counts and
`pg_dump -Fc` in one exported snapshot, sha256 of the archive, the manifest) against a raw
`pg_dump -Fc` of the same database with the same binary. 200,000 memory files over 200 tenants
plus 20,000 checkpoints with as many blobs and writes (quick: 5,000 files, 500 checkpoints).
The overhead (OVERHEAD_NOTE) is a count(*) of every table in the dump's snapshot, finding the
pg_dump binary (a few `--version` calls), sha256 of the archive and the manifest: a few percent at
full size (measured 1.01x to 1.06x on a 2-core box), more at the quick size where the fixed costs
dominate (about 1.7x on 60 ms); the target leaves room for noise.

`tenant_export_1k_of_1m`: `export_tenant()` of one tenant holding 1,000 memory files and 2 threads
(20 checkpoints), from a store of 1,000,000 files (1,000 such tenants) against the same tenant from
a store of 10,000 files (10 tenants); quick: 5,000 against 50,000. The tenant's rows are spread over
the heap as if written over time, and both exports must be byte-identical. Its items are found with
the store's `text_pattern_ops` prefix index (`prefix LIKE 't0003.%'`), its threads with the
`metadata->>'assistant_id'` index, so the cost follows the tenant's size, not the store's (checked
with EXPLAIN on the 1M store: index scans only; nothing in memory/tenants.py needed changing).
Warm cache: cold, the large store's tenant rows sit on about 3x as many heap pages.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from bench.harness import Context, Entry, Measurement
from bench import sql as bench_sql
from memory import MemoryService
from memory.backup import create_backup
from memory.pgtools import PgTool, find_tool
from memory.tenants import export_tenant

OVERHEAD_NOTE = (
    "create_backup = pg_dump -Fc of the service's tables + count(*) of each table in the same snapshot "
    "+ finding pg_dump + sha256 of the archive + the manifest: a few percent over a raw pg_dump at full size"
)
CREATE = Entry(
    "backup_create_vs_pg_dump",
    "memory backup create (counts, pg_dump -Fc, sha256, manifest) on 200k files + 20k checkpoints",
    "raw pg_dump -Fc (same binary, same database)",
    "<= 1.25",
    lower_is_better=True,
)
EXPORT = Entry(
    "tenant_export_1k_of_1m",
    "export of a 1,000-file tenant from a 1,000,000-file store",
    "the same tenant exported from a 10,000-file store",
    "<= 2",
    lower_is_better=True,
)
ENTRIES = (CREATE, EXPORT)

ITEMS_PER_TENANT = 1_000
EXPORTED = "t0003"
THREADS_PER_TENANT = 2
CHECKPOINTS_PER_THREAD = 10


def _load(svc: MemoryService, tenants: int, items: int, threads: int, checkpoints: int) -> None:
    """`tenants` tenants of `items` files and `threads` x `checkpoints` checkpoints each, then VACUUM ANALYZE."""
    params = {"tenants": tenants, "items": items, "threads": threads, "checkpoints": checkpoints}
    with psycopg.connect(svc.database_url, autocommit=True) as conn:
        conn.execute(bench_sql.BENCH_TENANT_LOAD_ITEMS, params)
        for load in (bench_sql.BENCH_TENANT_LOAD_CHECKPOINTS, bench_sql.BENCH_TENANT_LOAD_BLOBS, bench_sql.BENCH_TENANT_LOAD_WRITES):
            conn.execute(load, params)
        conn.execute(bench_sql.BENCH_VACUUM_ANALYZE)


def _pg_dump_for(url: str) -> PgTool:
    """The binary `create_backup` picks for this server (memory.pgtools)."""
    with psycopg.connect(url) as conn:
        return find_tool("pg_dump", conn.info.server_version // 10000)


def _raw_pg_dump(pg_dump: PgTool, url: str, out: Path) -> None:
    command = [str(pg_dump.path), "--format=custom", "-f", str(out), f"--dbname={url}"]
    subprocess.run(command, check=True, capture_output=True)


def _backup(ctx: Context) -> Measurement:
    tenants = ctx.size(200, 5)
    threads, checkpoints = ctx.size(5, 5), ctx.size(20, 20)
    with ctx.service("backup") as svc, tempfile.TemporaryDirectory(prefix="memory-bench-backup-") as tmp:
        ctx.progress(f"backup: loading {tenants * ITEMS_PER_TENANT:,} files, {tenants * threads * checkpoints:,} checkpoints ...")
        _load(svc, tenants, ITEMS_PER_TENANT, threads, checkpoints)
        ours_dir, raw = Path(tmp) / "ours", Path(tmp) / "raw.dump"
        pg_dump = _pg_dump_for(svc.database_url)
        sizes: dict[str, int] = {}

        def ours() -> None:
            manifest = create_backup(svc.database_url, ours_dir, keep=1)
            sizes["ours"] = manifest.size

        def baseline() -> None:
            _raw_pg_dump(pg_dump, svc.database_url, raw)
            sizes["raw"] = raw.stat().st_size

        ctx.progress(f"timing {CREATE.name} ...")
        ours_s, baseline_s = ctx.compare(ours, baseline)
        return Measurement(
            CREATE,
            ours_s,
            baseline_s,
            {
                "store_items": tenants * ITEMS_PER_TENANT,
                "tenants": tenants,
                "checkpoints": tenants * threads * checkpoints,
                "archive_bytes": sizes,
                "pg_dump": pg_dump.version,
                "reps": ctx.reps,
                "statistic": "median seconds per backup, sides alternating",
                "overhead": OVERHEAD_NOTE,
            },
        )


def _export(ctx: Context) -> Measurement:
    small, large = ctx.size(10, 5), ctx.size(1_000, 50)
    with ctx.service("export_small") as small_svc, ctx.service("export_large") as large_svc:
        for svc, tenants in ((small_svc, small), (large_svc, large)):
            ctx.progress(f"export: loading {tenants * ITEMS_PER_TENANT:,} files ...")
            _load(svc, tenants, ITEMS_PER_TENANT, THREADS_PER_TENANT, CHECKPOINTS_PER_THREAD)
        with tempfile.TemporaryDirectory(prefix="memory-bench-export-") as tmp, psycopg.connect(
            small_svc.database_url, autocommit=True, row_factory=dict_row
        ) as small_conn, psycopg.connect(large_svc.database_url, autocommit=True, row_factory=dict_row) as large_conn:
            large_out, small_out = Path(tmp) / "large.bundle", Path(tmp) / "small.bundle"
            manifests = [export_tenant(conn, EXPORTED, out) for conn, out in ((large_conn, large_out), (small_conn, small_out))]
            if manifests[0]["sections"] != manifests[1]["sections"]:
                raise AssertionError(f"{EXPORT.name}: the tenant's export differs between the two stores")
            if manifests[0]["sections"]["items"]["rows"] != ITEMS_PER_TENANT:
                raise AssertionError(f"{EXPORT.name}: exported {manifests[0]['sections']['items']['rows']} items")
            ctx.progress(f"timing {EXPORT.name} ...")
            ours_s, baseline_s = ctx.compare(
                lambda: export_tenant(large_conn, EXPORTED, large_out),
                lambda: export_tenant(small_conn, EXPORTED, small_out),
            )
            bundle_bytes = large_out.stat().st_size
    sections = manifests[0]["sections"]
    return Measurement(
        EXPORT,
        ours_s,
        baseline_s,
        {
            "tenant_items": ITEMS_PER_TENANT,
            "tenant_checkpoints": sections["checkpoints"]["rows"],
            "store_items": {"ours": large * ITEMS_PER_TENANT, "baseline": small * ITEMS_PER_TENANT},
            "checkpoints_in_store": {
                "ours": large * THREADS_PER_TENANT * CHECKPOINTS_PER_THREAD,
                "baseline": small * THREADS_PER_TENANT * CHECKPOINTS_PER_THREAD,
            },
            "bundle_bytes": bundle_bytes,
            "sections_identical": True,
            "reps": ctx.reps,
            "statistic": "median seconds per export, sides alternating",
        },
    )


def run(ctx: Context, entries: list[Entry]) -> Iterator[Measurement]:
    if CREATE in entries:
        yield _backup(ctx)
    if EXPORT in entries:
        yield _export(ctx)
