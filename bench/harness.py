"""What every benchmark shares: entries, timing, scratch databases, machine facts, results.json."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql

from bench import sql as bench_sql
from memory import MemoryService
from memory.db import with_dbname

RESULTS_PATH = Path(__file__).parent / "results.json"
QUICK_RESULTS_PATH = Path(__file__).parent / "results-quick.json"


@dataclass(frozen=True)
class Entry:
    """One named figure. `ratio` is baseline_s / ours_s (higher is better) unless `lower_is_better`,
    then ours_s / baseline_s. `target` is the bound the full run must show, e.g. ">= 20"."""

    name: str
    description: str
    baseline: str
    target: str
    lower_is_better: bool = False

    def ratio(self, ours_s: float, baseline_s: float) -> float:
        return ours_s / baseline_s if self.lower_is_better else baseline_s / ours_s

    def meets(self, ratio: float) -> bool:
        operator, bound = self.target.split()
        return ratio >= float(bound) if operator == ">=" else ratio <= float(bound)

    @property
    def ratio_definition(self) -> str:
        return "ours_s / baseline_s, lower is better" if self.lower_is_better else "baseline_s / ours_s, higher is better"


@dataclass
class Measurement:
    entry: Entry
    ours_s: float
    baseline_s: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.entry.ratio(self.ours_s, self.baseline_s)

    def record(self, machine: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": self.entry.name,
            "ours_s": round(self.ours_s, 6),
            "baseline": self.entry.baseline,
            "baseline_s": round(self.baseline_s, 6),
            "ratio": round(self.ratio, 3),
            "params": {**self.params, "ratio_definition": self.entry.ratio_definition, "target": self.entry.target},
            "machine": machine,
        }


@dataclass
class Context:
    """Handed to each entry module: sizes, repetitions, and scratch databases on the server."""

    admin_url: str
    quick: bool
    reps: int
    progress: Callable[[str], None] = print

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @contextmanager
    def service(self, label: str, **overrides: object) -> Iterator[MemoryService]:
        """A fresh, migrated database on the server, dropped afterwards, opened as a service
        (`overrides`: settings fields, e.g. quota limits)."""
        dbname = f"bench_{label}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(pgsql.SQL(bench_sql.BENCH_CREATE_DATABASE).format(pgsql.Identifier(dbname)))
        try:
            with MemoryService.open(
                database_url=with_dbname(self.admin_url, dbname), database_pool_max_size=4, **overrides
            ) as svc:
                svc.setup()
                yield svc
        finally:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(pgsql.SQL(bench_sql.BENCH_DROP_DATABASE).format(pgsql.Identifier(dbname)))

    @contextmanager
    def database(self, label: str, template: str | None = None) -> Iterator[str]:
        """A scratch database's name (a copy of database `template` when given), dropped afterwards."""
        name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
        statement = bench_sql.BENCH_CREATE_DATABASE_FROM if template else bench_sql.BENCH_CREATE_DATABASE
        names = [pgsql.Identifier(name)] + ([pgsql.Identifier(template)] if template else [])
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(pgsql.SQL(statement).format(*names))
        try:
            yield name
        finally:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(pgsql.SQL(bench_sql.BENCH_DROP_DATABASE).format(pgsql.Identifier(name)))

    def url(self, dbname: str) -> str:
        return with_dbname(self.admin_url, dbname)

    def compare(self, ours: Callable[[], object], baseline: Callable[[], object]) -> tuple[float, float]:
        """Median seconds of each side over `reps` runs, after one warm-up each, alternating sides."""
        ours()
        baseline()
        ours_times, baseline_times = [], []
        for _ in range(self.reps):
            ours_times.append(timed(ours))
            baseline_times.append(timed(baseline))
        return statistics.median(ours_times), statistics.median(baseline_times)


    def compare_interleaved(
        self, ours: list[Callable[[], object]], baseline: list[Callable[[], object]]
    ) -> tuple[float, float]:
        """Like `compare` for work split in steps: each rep runs the two sides' steps alternately
        (who goes first alternating too), so load from elsewhere on the machine hits both alike."""
        for step in (*ours, *baseline):
            step()
        ours_totals, baseline_totals = [], []
        for _ in range(self.reps):
            ours_total = baseline_total = 0.0
            for index, (our_step, baseline_step) in enumerate(zip(ours, baseline, strict=True)):
                if index % 2:
                    baseline_total += timed(baseline_step)
                    ours_total += timed(our_step)
                else:
                    ours_total += timed(our_step)
                    baseline_total += timed(baseline_step)
            ours_totals.append(ours_total)
            baseline_totals.append(baseline_total)
        return statistics.median(ours_totals), statistics.median(baseline_totals)


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        version = conn.info.server_version
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "postgres": f"{version // 10000}.{version % 10000}",
    }


def merge_results(path: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace entries of the same name, keep every other entry, write the file back."""
    existing: list[dict[str, Any]] = []
    if path.exists():
        existing = json.loads(path.read_text(encoding="utf-8"))
    fresh = {record["name"]: record for record in records}
    merged = [fresh.pop(record["name"], record) for record in existing]
    merged += fresh.values()
    path.write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return merged
