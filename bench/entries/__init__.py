"""Benchmark entry modules, found by the runner.

A module here defines `ENTRIES` (a tuple of `bench.harness.Entry`) and
`run(ctx, entries) -> Iterator[bench.harness.Measurement]`, which receives the subset of its
entries selected on the command line and may share one data set between them. Adding a module
is all it takes to add entries; results.json keeps other entries' figures.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def modules() -> list[ModuleType]:
    """Every entry module, in name order."""
    found = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
    return sorted(found, key=lambda module: module.__name__)
