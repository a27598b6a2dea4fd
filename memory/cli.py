"""The `memory` command line: one clear line and a non-zero exit on failure; `-v` for tracebacks."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from memory.errors import MemoryServiceError

app = typer.Typer(
    name="memory",
    help="Tenant-isolated long-term memory for Deep Agents on PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Schema: create and upgrade the service's tables.", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console()
err_console = Console(stderr=True)
_state = {"verbose": False}


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")] = False,
) -> None:
    """Settings come from config/memory.toml, MEMORY_CONFIG and MEMORY_* variables.

    With no MEMORY_DATABASE_URL (or DATABASE_URL), an embedded PostgreSQL 18 is started under
    MEMORY_DATA_DIR.
    """
    _state["verbose"] = verbose


def fail(exc: BaseException) -> None:
    """Print one line (the cause chain with -v) and exit 1."""
    if _state["verbose"]:
        err_console.print_exception()
    err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _open_service():
    from memory.service import MemoryService

    return MemoryService.open()


@app.command()
def demo(
    model: Annotated[
        Optional[str],
        typer.Option(help="A real chat model as provider:name (needs its API key); default: a scripted model."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Run two tenants' deep agents on the embedded default and show memory persists and stays isolated."""
    from memory.demo import run_demo

    try:
        with _open_service() as svc:
            svc.setup()
            if not as_json:
                console.print(
                    f"database: {'embedded PostgreSQL under ' + str(svc.settings.data_dir) if not svc.settings.database_url else 'configured URL'}"
                )
                console.print(
                    f"model: {model or 'scripted (plays back fixed tool calls; no LLM, no API key)'}"
                )
            outcomes = run_demo(svc, model)
    except MemoryServiceError as exc:
        fail(exc)
    ok = all(o.remembered and o.scratch_forgotten and o.isolated for o in outcomes)
    if as_json:
        print(json.dumps({"ok": ok, "tenants": [
            {k: getattr(o, k) for k in ("tenant", "remembered", "scratch_forgotten", "isolated", "files", "bytes")}
            for o in outcomes]}, indent=2))
    else:
        table = Table(title="Memory per tenant")
        for column in ("tenant", "files", "bytes", "recalled in a new thread", "/scratch.md gone", "isolated"):
            table.add_column(column)
        mark = {True: "[green]yes[/]", False: "[red]no[/]"}
        for o in outcomes:
            table.add_row(o.tenant, str(o.files), str(o.bytes), mark[o.remembered], mark[o.scratch_forgotten], mark[o.isolated])
        console.print(table)
        console.print("[green]ok[/]: memory persisted across threads and stayed isolated" if ok else "[red]demo checks failed[/]")
    if not ok:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade every table (LangGraph's store and checkpoint tables included)."""
    try:
        with _open_service() as svc:
            svc.setup()
    except MemoryServiceError as exc:
        fail(exc)
    console.print("schema is up to date")


def run() -> None:  # pragma: no cover - console entry for `python -m memory`
    app(prog_name="memory")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
