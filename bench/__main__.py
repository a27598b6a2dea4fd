"""`python -m bench [--quick] [--only NAME ...] [--reps N] [--out FILE]`.

Runs on MEMORY_DATABASE_URL when set (scratch databases are created on that server), else on an
embedded PostgreSQL in a temporary directory. Full runs merge into bench/results.json and exit 1
when an entry misses its target; quick runs (small sizes, for CI) go to bench/results-quick.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

from bench import entries as entry_modules
from bench.harness import QUICK_RESULTS_PATH, RESULTS_PATH, Context, Measurement, machine, merge_results
from memory.db import check_reachable, with_dbname
from memory.embedded import EmbeddedPostgres
from memory.errors import MemoryServiceError

console = Console()


@contextmanager
def server() -> Iterator[str]:
    """An admin URL (database `postgres`) on the configured server or a throwaway embedded one."""
    url = os.environ.get("MEMORY_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        check_reachable(url)
        yield url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    embedded = EmbeddedPostgres(data_dir)
    try:
        yield with_dbname(embedded.start(), "postgres")
    finally:
        embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="small sizes (for CI); results to results-quick.json")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this entry (repeatable)")
    parser.add_argument("--reps", type=int, help="timed repetitions per side (default 5, quick 3)")
    parser.add_argument("--out", type=Path, help="results file to merge into")
    return parser.parse_args(argv)


def table(measurements: list[Measurement], quick: bool) -> Table:
    title = "benchmarks (quick sizes: targets not judged)" if quick else "benchmarks"
    grid = Table(title=title, caption="baseline: each entry's own (plain StoreBackend, or PostgresStore.sweep_ttl() for sweeps)")
    for column in ("entry", "ours ms", "baseline ms", "ratio", "target", ""):
        grid.add_column(column, justify="right" if column not in ("entry", "") else "left")
    for m in measurements:
        verdict = "" if quick else ("[green]ok" if m.entry.meets(m.ratio) else "[red]MISSED")
        grid.add_row(
            m.entry.name,
            f"{m.ours_s * 1000:.1f}",
            f"{m.baseline_s * 1000:.1f}",
            f"{m.ratio:.2f}",
            m.entry.target.replace(">=", "≥").replace("<=", "≤"),
            verdict,
        )
    return grid


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modules = entry_modules.modules()
    known = {entry.name for module in modules for entry in module.ENTRIES}
    unknown = sorted(set(args.only or ()) - known)
    if unknown:
        console.print(f"unknown entry {', '.join(unknown)}; known entries: {', '.join(sorted(known))}")
        return 2
    reps = args.reps or (3 if args.quick else 5)
    out = args.out or (QUICK_RESULTS_PATH if args.quick else RESULTS_PATH)
    started = time.perf_counter()
    measurements: list[Measurement] = []
    try:
        with server() as admin_url:
            ctx = Context(admin_url, args.quick, reps, progress=lambda text: console.print(f"[dim]{text}"))
            facts = machine(admin_url)
            for module in modules:
                selected = [entry for entry in module.ENTRIES if not args.only or entry.name in args.only]
                if selected:
                    measurements += module.run(ctx, selected)
    except MemoryServiceError as exc:
        console.print(f"bench: {exc}")
        return 1
    except psycopg.Error as exc:
        console.print(f"bench: {' '.join(str(exc).split())}; the benchmarks need a server where they may CREATE DATABASE")
        return 1
    console.print(table(measurements, args.quick))
    merge_results(out, [m.record(facts) for m in measurements])
    console.print(f"{len(measurements)} entries in {time.perf_counter() - started:.0f}s; results merged into {out}")
    missed = [m.entry.name for m in measurements if not m.entry.meets(m.ratio)]
    if missed and not args.quick:
        console.print(f"[red]missed target: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
