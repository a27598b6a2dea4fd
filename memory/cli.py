"""The `memory` command line: one `error:` line and a non-zero exit on any failure; `-v` for tracebacks.

`ErrorBoundary` (the root group) is the one place failures are printed: our exceptions as they
are, driver errors through `memory.db.translate`, file errors with their path, bad arguments as
one line naming the command's `--help`. Commands just raise.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer vendors click
from typer.core import TyperGroup

from memory.errors import MemoryServiceError


class ErrorBoundary(TyperGroup):
    """Every failure of every command becomes one `error:` line on stderr and a non-zero exit."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:  # noqa: FBT001, FBT002
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()
            code = 0
        except UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "memory"
            _print_error(f"{exc.format_message()} (see `{where} --help`)")
            code = exc.exit_code
        except typer.Abort:
            _print_error("aborted")
            code = 1
        except KeyboardInterrupt:
            _print_error("interrupted")
            code = 130
        except Exception as exc:  # noqa: BLE001 - the boundary: every failure is one line
            if _state["verbose"]:
                err_console.print_exception()
            _print_error(describe_failure(exc))
            code = 1
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def describe_failure(exc: BaseException) -> str:
    """The line for a failure: ours as it is, driver errors via `memory.db.translate`, files with their path."""
    if isinstance(exc, MemoryServiceError):
        return str(exc)
    if isinstance(exc, typer.TyperException):
        return exc.format_message()
    if type(exc).__module__.split(".")[0] in ("psycopg", "psycopg_pool"):
        from memory.db import translate

        return str(translate(exc))
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc} (run with -v for the traceback)"


def _print_error(message: str) -> None:
    line = " ".join(str(message).split()) or "failed"
    err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:  # noqa: FBT001
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("deepagents-memory")
        except PackageNotFoundError:
            number = "unknown (not installed)"
        print(f"deepagents-memory {number}")
        raise typer.Exit(0)


def _typer(help: str) -> typer.Typer:  # noqa: A002
    """A sub-command group: plain help (no rich markup, so `[section]` words show)."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None)


HELP = """Tenant-isolated long-term memory for Deep Agents on PostgreSQL.

Settings come from one file: MEMORY_CONFIG, else ./config/memory.toml, else memory.toml in the user
config dir; then MEMORY_<SECTION>_<KEY> variables (`memory config show` prints them all and where
each came from). With no [database] url (MEMORY_DATABASE_URL or DATABASE_URL), an embedded
PostgreSQL 18 runs under MEMORY_DATA_DIR; backups go to [backup] dir, backups/ under that data dir
by default."""

app = typer.Typer(
    name="memory",
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    cls=ErrorBoundary,
)
db_app = _typer("Schema: create, inspect and step back the service's tables.")
app.add_typer(db_app, name="db")
jobs_app = _typer("Scheduled jobs ([schedule]): run one now, see past runs.")
app.add_typer(jobs_app, name="jobs")
backup_app = _typer(
    "Backups: pg_dump of the service's tables with a manifest; verify; restore. "
    "They go to [backup] dir: backups/ under the data dir unless set (`memory config show`)."
)
app.add_typer(backup_app, name="backup")
tenant_app = _typer("Tenants: list, stats, export/import bundles, erase.")
app.add_typer(tenant_app, name="tenant")
threads_app = _typer("Thread ownership (admin): threads no tenant owns, and giving one an owner.")
app.add_typer(threads_app, name="threads")
config_app = _typer("Settings: which file is read, the effective values and where each came from.")
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)
_state = {"verbose": False}


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
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
        typer.Option(help="A real chat model as provider:name (needs its package and API key); default: a scripted model."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Run two demo tenants' deep agents (demo-acme, demo-globex) and show memory persists across
    threads and stays isolated. Uses [database] url when set (never touching other tenants), else the
    embedded PostgreSQL under the data dir."""
    from memory.db import describe_url
    from memory.demo import real_model, run_demo

    if model:
        real_model(model)  # fail before touching the database
    with _open_service() as svc:
        svc.setup()
        where = describe_url(svc.database_url)
        database = (
            f"{where} (configured)" if svc.settings.database_url
            else f"{where} (embedded PostgreSQL under {svc.settings.data_dir})"
        )
        if not as_json:
            console.print(f"database: {database}", markup=False, highlight=False, soft_wrap=True)
            console.print(f"model: {model or 'scripted (plays back fixed tool calls; no LLM, no API key)'}", markup=False)
        outcomes = run_demo(svc, model)
    ok = all(o.remembered and o.scratch_forgotten and o.isolated for o in outcomes)
    if as_json:
        print(json.dumps({"ok": ok, "database": database, "tenants": [
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


def _quiet_alembic() -> None:
    """Alembic logs each step at INFO; the db commands print one line instead."""
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)


def _print_state(state, line: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(state.as_dict()))
    else:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@db_app.command("upgrade")
def db_upgrade(
    as_json: Annotated[bool, typer.Option("--json", help="Print the revisions as JSON.")] = False,
) -> None:
    """Create or upgrade every table to head: ours (alembic) and LangGraph's store and checkpoint tables."""
    from memory.db import describe_url

    _quiet_alembic()
    try:
        with _open_service() as svc:
            state = svc.setup()
            where = describe_url(svc.database_url)
    except MemoryServiceError as exc:
        fail(exc)
    if state.changed:
        line = f"upgraded {where} from {state.before_label()} to {state.label()}"
    else:
        line = f"{where} is at {state.label()}; nothing to upgrade"
    if state.unattributed_threads:
        shown = ", ".join(state.unattributed_threads[:20]) + (", ..." if len(state.unattributed_threads) > 20 else "")
        line += (
            f"\n{len(state.unattributed_threads)} checkpoint threads could not be attributed to one tenant and are "
            f"refused to every tenant: {shown}; see `memory threads unowned`, then `memory threads assign THREAD TENANT`"
        )
    _print_state(state, line, as_json)


@db_app.command("current")
def db_current(
    as_json: Annotated[bool, typer.Option("--json", help="Print the revision as JSON.")] = False,
) -> None:
    """Print the database's schema revision, with `(head)` when it is up to date."""
    from memory import migrations

    _quiet_alembic()
    try:
        with _open_service() as svc:
            state = migrations.current(
                svc.database_url,
                schema=svc.settings.database_schema,
                prepare_threshold=svc.settings.database_prepare_threshold,
            )
    except MemoryServiceError as exc:
        fail(exc)
    line = state.label() if state.at_head else f"{state.label()} (head is {state.head}; run `memory db upgrade`)"
    _print_state(state, line, as_json)


@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def db_downgrade(
    revision: Annotated[str, typer.Argument(help='Target revision: an id, "-1", or "base" (drops our tables; LangGraph\'s stay).')],
    as_json: Annotated[bool, typer.Option("--json", help="Print the revisions as JSON.")] = False,
) -> None:
    """Step the schema back to REVISION. Agent data in LangGraph's tables is never dropped."""
    from memory import migrations
    from memory.db import describe_url

    _quiet_alembic()
    try:
        with _open_service() as svc:
            state = migrations.downgrade(
                svc.database_url,
                revision,
                schema=svc.settings.database_schema,
                prepare_threshold=svc.settings.database_prepare_threshold,
            )
            where = describe_url(svc.database_url)
    except MemoryServiceError as exc:
        fail(exc)
    if state.changed:
        line = f"downgraded {where} from {state.before_label()} to {state.label()}"
    else:
        line = f"{where} is already at {state.label()}; nothing to downgrade"
    _print_state(state, line, as_json)


# -- jobs and serve ---------------------------------------------------------------------------

JOB_NAMES = ("ttl-cleanup", "prune-checkpoints", "backup")
"""What `memory jobs run` accepts (help text; the registry in jobs/registry.py is the source: a test
checks they agree)."""


def _job(name: str):
    from jobs import registry

    try:
        return registry.by_name(name)
    except KeyError as exc:
        raise typer.BadParameter(exc.args[0]) from None


def _print_report(report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    spec = _job(report.job)
    if report.tenant_counts and spec.tenant_columns:
        table = Table(title=f"{'would delete' if report.dry_run else 'deleted'} per tenant")
        for column in ("tenant", *spec.tenant_columns):
            table.add_column(column)
        for tenant, per in sorted(report.tenant_counts.items()):
            table.add_row(tenant, *(str(per.get(column, 0)) for column in spec.tenant_columns))
        console.print(table)
    status = "[green]succeeded[/]" if report.status == "succeeded" else f"[red]{report.status}[/]"
    console.print(
        f"{report.job} run {report.run_id}{' (dry run)' if report.dry_run else ''} {status}: "
        f"{spec.summary(report)}, {report.duration_s or 0:.2f}s",
        soft_wrap=True, highlight=False,
    )
    if report.error:
        err_console.print(f"error: {report.error}", markup=False, highlight=False, soft_wrap=True)


@jobs_app.command("run")
def jobs_run(
    job: Annotated[str, typer.Argument(help=f"The job: {', '.join(JOB_NAMES)}.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Delete nothing; report what a real run would delete.")] = False,
    tenant: Annotated[Optional[str], typer.Option("--tenant", help="Only this tenant's memory (prune-checkpoints: its threads, by assistant_id).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run report as JSON.")] = False,
    full: Annotated[bool, typer.Option("--full", help="prune-checkpoints: look at every thread, not only those written since the last run.")] = False,
) -> None:
    """Run a job now (once, under the same lock as the scheduler) and record it in memory_job_runs.

    ttl-cleanup deletes expired memory files ([retention]); prune-checkpoints deletes idle
    checkpoint threads, trims each thread's history to keep_latest ([checkpoints]; what deep
    agents' DeltaChannels are rebuilt from stays) and removes orphan writes and blobs, looking only
    at threads written since its last run unless --full (or full_pass_days have passed since the
    last full pass); backup writes a pg_dump backup to [backup] dir (backups/ under the data dir
    unless set) and removes the oldest beyond [backup] keep. Tenants under legal hold are never touched.
    """
    from jobs.scheduler import job_runners
    from memory.db import connection

    spec = _job(job)
    name = spec.name
    if full and name != "prune_checkpoints":
        fail(ValueError(f"--full applies to prune-checkpoints only, not {job}"))
    progress = None
    try:
        with _open_service() as svc:
            runner = job_runners(svc.settings, svc.database_url)[name]
            show = console.is_terminal and not as_json
            with connection(svc.pool) as conn:
                if show:
                    progress = console.status(f"{name}: starting")
                    progress.start()
                report = runner(
                    conn,
                    dry_run=dry_run,
                    tenant=tenant,
                    **({"full": True} if full else {}),
                    on_batch=(lambda r: progress.update(spec.progress(r))) if show and spec.progress else None,
                )
    except (MemoryServiceError, ValueError) as exc:
        if progress is not None:
            progress.stop()
        fail(exc)
    if progress is not None:
        progress.stop()
    _print_report(report, as_json)
    if report.status != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("history")
def jobs_history(
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many runs, newest first.")] = 20,
    job: Annotated[Optional[str], typer.Option("--job", help=f"Only this job: {', '.join(JOB_NAMES)}.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """Past job runs from memory_job_runs (every replica's), newest first."""
    from datetime import timezone

    from jobs import runs
    from memory.db import connection

    name = _job(job).name if job else None
    try:
        with _open_service() as svc, connection(svc.pool) as conn:
            reports = runs.history(conn, limit, name)
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
        return
    table = Table(title="Job runs (newest first; --json for hosts and per-tenant counts)")
    for column in ("id", "job", "started UTC", "took", "status", "did", "error"):
        table.add_column(column, overflow="fold")
    for r in reports:
        try:
            did = _job(r.job).done(r)
        except typer.BadParameter:  # a job this version no longer has
            did = json.dumps(r.counts)
        table.add_row(
            str(r.run_id), r.job, r.started_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            f"{r.duration_s:.2f}s" if r.duration_s is not None else "-",
            r.status + (" (dry)" if r.dry_run else ""), did, r.error or "",
        )
    console.print(table)


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Address to listen on (default: [serve] host, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="Port for the API and /health /ready /metrics (default: [serve] port, 9464; 0 picks one).")] = None,
    no_jobs: Annotated[bool, typer.Option("--no-jobs", help="Serve the Store API without the scheduler (API replicas).")] = False,
    jobs_only: Annotated[bool, typer.Option("--jobs-only", help="Run the scheduler without the Store API (/health /ready /metrics stay).")] = False,
) -> None:
    """Serve the Store API and /health, /ready, /metrics, and run the scheduled jobs ([schedule]), until SIGTERM.

    Backups of the backup job go to [backup] dir (backups/ under the data dir by default)."""
    from memory import logs
    from memory.serve import serve as run_serve

    logs.configure(_load_settings().serve_log_format)

    def announce(url: str, jobs) -> None:
        scheduled = ", ".join(f"{job.name} ({job.schedule})" for job in jobs) or "none"
        store = "" if jobs_only else " /store"
        print(f"serving {url}/health /ready /metrics{store}; jobs: {scheduled}", flush=True)

    try:
        if no_jobs and jobs_only:
            raise MemoryServiceError("--no-jobs and --jobs-only exclude each other: pass one (or neither for both)")
        with _open_service() as svc:
            run_serve(
                svc,
                host=host if host is not None else svc.settings.serve_host,
                port=port if port is not None else svc.settings.serve_port,
                on_ready=announce,
                no_jobs=no_jobs,
                jobs_only=jobs_only,
            )
    except MemoryServiceError as exc:
        fail(exc)
    print("stopped", flush=True)


# -- API keys -------------------------------------------------------------------------------------

keys_app = typer.Typer(help="Store API keys: create (shown once), list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _utc(at) -> str:
    from datetime import timezone

    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Argument(help="The tenant the key reaches: namespaces whose first label is it.")],
    name: Annotated[str, typer.Option("--name", help="A label to recognise the key by (who or what uses it).")] = "",
    admin: Annotated[bool, typer.Option("--admin", help="Reach every tenant's namespaces (operators only).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the key and its secret as JSON.")] = False,
) -> None:
    """Create an API key and print its secret once; only its sha256 is stored."""
    from memory.apikeys import create_key
    from memory.db import connection

    try:
        with _open_service() as svc, connection(svc.pool) as conn:
            key, secret = create_key(conn, tenant, name=name, admin=admin)
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        _print_json({**key.to_dict(), "secret": secret})
        return
    print(secret)
    err_console.print(
        f"key {key.id} for {key.reaches}{' (admin)' if key.admin else ''}: the secret above is shown only now; "
        "send it as x-api-key (langgraph_sdk: get_client(url=..., api_key=...))",
        markup=False, highlight=False, soft_wrap=True,
    )


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json", help="Print the keys as JSON.")] = False) -> None:
    """Every API key (never its secret): tenant, name, admin, created, last used, revoked."""
    from memory.apikeys import list_keys
    from memory.db import connection

    try:
        with _open_service() as svc, connection(svc.pool) as conn:
            keys = list_keys(conn)
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        _print_json([key.to_dict() for key in keys])
        return
    table = Table(title="API keys")
    for column in ("id", "tenant", "name", "admin", "created (UTC)", "last used (UTC)", "revoked (UTC)"):
        table.add_column(column, no_wrap=column == "id")
    for key in keys:
        table.add_row(key.id, key.tenant, key.name, "yes" if key.admin else "", _utc(key.created_at),
                      _utc(key.last_used_at), _utc(key.revoked_at))
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (`memory keys list`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the revoked key as JSON.")] = False,
) -> None:
    """Revoke a key: its next request is refused (401)."""
    from memory.apikeys import revoke_key
    from memory.db import connection

    try:
        with _open_service() as svc, connection(svc.pool) as conn:
            key = revoke_key(conn, key_id)
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        _print_json(key.to_dict())
    else:
        console.print(f"revoked key {key.id} ({key.reaches}) at {_utc(key.revoked_at)} UTC", markup=False, highlight=False)


# -- backup and tenant ---------------------------------------------------------------------------


class _Progress:
    """Progress bars on a terminal, never with --json (stdout stays pure JSON).

    Used as `with _Progress(as_json) as on_step`: `on_step(step, done, total)` (the callback of
    memory.backup and memory.tenants) shows one row per step, with a bar and "done/total" when the
    step gives its size and a spinner when it does not; a new step marks the previous one done.
    """

    def __init__(self, as_json: bool) -> None:
        self.bars = _progress_bars() if console.is_terminal and not as_json else None
        self.tasks: dict[str, int] = {}
        self.sized: dict[str, bool] = {}
        self.current: str | None = None

    def __enter__(self):
        if self.bars is None:
            return None
        self.bars.start()
        return self.update

    def update(self, step: str, done: int = 0, total: int | None = None) -> None:
        if step not in self.tasks:
            self._finish_current()
            self.tasks[step] = self.bars.add_task(step, total=total, count="")
            self.current = step
        self.sized[step] = total is not None
        count = "" if total is None else f"{done:,}/{total:,}"
        bar_done, bar_total = (1, 1) if total == 0 else (done, total)
        self.bars.update(self.tasks[step], completed=bar_done, total=bar_total, count=count)

    def _finish_current(self) -> None:
        """A step of unknown size is over when the next one starts: show it done."""
        if self.current is not None and not self.sized[self.current]:
            self.bars.update(self.tasks[self.current], completed=1, total=1)

    def __exit__(self, kind, *exc) -> None:
        if self.bars is not None:
            if kind is None:
                self._finish_current()
            self.bars.stop()


def _progress_bars():
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(finished_text="✓"),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TextColumn("{task.fields[count]}", markup=False),
        TimeElapsedColumn(),
        console=console,
    )


def _load_settings():
    from memory.settings import MemorySettings

    return MemorySettings.load()


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


@backup_app.command("create")
def backup_create(
    out: Annotated[Optional[str], typer.Option("--out", help="Directory for the backup (default: [backup] dir, backups/ under the data dir unless set; `memory config show`).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """pg_dump -Fc of the service's tables plus a manifest (.json) beside it, into [backup] dir
    (backups/ under the data dir unless set); removes the oldest beyond [backup] keep."""
    from pathlib import Path

    from memory.backup import create_backup

    try:
        with _open_service() as svc, _Progress(as_json) as step:
            manifest = create_backup(
                svc.database_url, Path(out) if out else svc.settings.backup_dir, keep=svc.settings.backup_keep, on_step=step
            )
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        _print_json(manifest.to_dict())
        return
    console.print(
        f"backup {manifest.path} ({manifest.size} bytes, {sum(manifest.tables.values())} rows in "
        f"{len(manifest.tables)} tables, schema {manifest.schema_revision}, sha256 {manifest.sha256[:12]}…)",
        markup=False, highlight=False, soft_wrap=True,
    )


@backup_app.command("list")
def backup_list(
    directory: Annotated[Optional[str], typer.Option("--dir", help="Backup directory (default: [backup] dir, backups/ under the data dir unless set; `memory config show`).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifests as JSON.")] = False,
) -> None:
    """Backups in [backup] dir (backups/ under the data dir unless set), newest first; says where it looked."""
    from pathlib import Path

    from memory.backup import list_backups

    where = Path(directory) if directory else _load_settings().backup_dir
    manifests = list_backups(where)
    if as_json:
        _print_json([m.to_dict() for m in manifests])
        return
    table = Table(title=f"Backups in {where}" + ("" if where.is_dir() else " (no such directory)"))
    for column in ("file", "created (UTC)", "size", "rows", "server", "schema revision"):
        table.add_column(column)
    for m in manifests:
        table.add_row(m.file, m.created_at[:19], str(m.size), str(sum(m.tables.values())), m.server_version, m.schema_revision or "-")
    console.print(table)


@backup_app.command("verify")
def backup_verify(
    file: Annotated[str, typer.Argument(help="The archive (.dump) or its manifest (.json).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Check the archive's sha256, that pg_restore can read it, and that every table is in it."""
    from pathlib import Path

    from memory.backup import verify_backup

    try:
        with _Progress(as_json) as step:
            manifest = verify_backup(Path(file), on_step=step)
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        _print_json({"ok": True, **manifest.to_dict()})
    else:
        console.print(f"ok: {manifest.file} ({len(manifest.tables)} tables, sha256 matches)", markup=False, highlight=False)


@backup_app.command("restore")
def backup_restore(
    file: Annotated[str, typer.Argument(help="The archive (.dump) or its manifest (.json).")],
    target: Annotated[Optional[str], typer.Option("--target", help="Database URL to restore into (default: the service's).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the data of a non-empty target.")] = False,
    tenant: Annotated[Optional[str], typer.Option("--tenant", help="Restore only this tenant; every other tenant stays as it is now.")] = None,
    as_tenant: Annotated[Optional[str], typer.Option("--as", help="With --tenant: restore it under this name instead.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --tenant: show the counts, change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="With --tenant: do not ask before replacing the tenant's data.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Verify, then restore in one transaction (the target is unchanged on failure), then migrate to head.

    Every erasure known to the target's ledger or to the receipts beside the backups stays erased.
    With --tenant T: only T's memory items, vectors and threads go back to their state in the backup
    (its rows written since are replaced), in one transaction; other tenants are not touched.
    """
    from pathlib import Path

    from memory import migrations
    from memory.backup import restore_backup

    if tenant is None and (as_tenant or dry_run or yes):
        fail(MemoryServiceError("--as, --dry-run and --yes go with --tenant T (a full restore asks for --force instead)"))
    if tenant is not None:
        return _restore_one_tenant(Path(file), tenant, as_tenant, dry_run, yes, target, as_json)
    _quiet_alembic()
    try:
        with _stopped_by_sigterm():
            settings = _load_settings()
            dirs = list(dict.fromkeys([Path(file).parent, Path(settings.backup_dir)]))
            if target:
                url = migrations.schema_url(target, settings.database_schema)
                with _Progress(as_json) as step:
                    report = restore_backup(Path(file), url, force=force, on_step=step, receipts_dirs=dirs)
            else:
                with _open_service() as svc, _Progress(as_json) as step:
                    report = restore_backup(
                        Path(file), svc.database_url, force=force, on_step=step, upgrade=lambda _url: svc.setup(),
                        receipts_dirs=dirs,
                    )
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        _print_json(report.to_dict())
        return
    console.print(
        f"restored {report.file} (taken {report.created_at[:19]}) into {report.target}: "
        f"{sum(report.tables.values())} rows; schema at {report.schema_revision}",
        markup=False, highlight=False, soft_wrap=True,
    )
    if report.erasures_replayed:
        console.print(
            f"erased again (erasures the backup does not hold): {', '.join(report.erasures_replayed)}", markup=False
        )


def _restore_one_tenant(file, tenant: str, as_tenant, dry_run: bool, yes: bool, target, as_json: bool) -> None:
    from pathlib import Path

    from memory import migrations
    from memory.tenant_restore import restore_tenant

    def confirm(plan) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise MemoryServiceError(f"{plan.describe()}; pass --yes to confirm (no terminal to ask on); nothing was changed")
        err_console.print(plan.describe(), markup=False, highlight=False, soft_wrap=True)
        return typer.confirm("Replace them?", default=False, err=True)

    try:
        with _stopped_by_sigterm():
            settings = _load_settings()
            dirs = list(dict.fromkeys([Path(file).parent, Path(settings.backup_dir)]))
            with contextlib.ExitStack() as stack:  # the service (an embedded server) stays up for the restore
                if target:
                    url = migrations.schema_url(target, settings.database_schema)
                else:
                    url = stack.enter_context(_open_service()).database_url
                with _Progress(as_json) as step:
                    plan = restore_tenant(
                        file, url, tenant, as_tenant=as_tenant, dry_run=dry_run, confirm=confirm, receipts_dirs=dirs,
                        on_step=step,
                    )
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        _print_json(plan.to_dict())
        return
    if dry_run:
        console.print(f"would restore {plan.describe()}", markup=False, highlight=False, soft_wrap=True)
        return
    imported = plan.imported or {}
    console.print(
        f"restored {plan.tenant}{'' if plan.target == plan.tenant else ' as ' + plan.target} from {plan.file}: "
        f"removed {sum((imported.get('removed') or {}).values())} rows written since, wrote {imported.get('items_inserted', 0)} "
        f"items, {imported.get('vectors', 0)} vectors, {imported.get('threads', 0)} threads "
        f"({imported.get('checkpoints_inserted', 0)} checkpoints); other tenants untouched",
        markup=False, highlight=False, soft_wrap=True,
    )


class _stopped_by_sigterm:
    """SIGTERM raises SystemExit(143) (from the main thread) so cleanups run: children stopped, scratch dropped."""

    def __enter__(self) -> None:
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            def stop(signum, frame):
                raise SystemExit(128 + signum)

            self.previous = signal.signal(signal.SIGTERM, stop)

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


@tenant_app.command("list")
def tenant_list(as_json: Annotated[bool, typer.Option("--json", help="Print the tenants as JSON.")] = False) -> None:
    """Every tenant holding memory items or checkpoint threads."""
    from memory.db import connection
    from memory.tenants import list_tenants

    try:
        with _open_service() as svc, connection(svc.pool) as conn:
            stats = list_tenants(conn)
    except MemoryServiceError as exc:
        fail(exc)
    _print_tenant_stats(stats, as_json, "Tenants")


def _print_tenant_stats(stats, as_json: bool, title: str) -> None:
    if as_json:
        _print_json([s.to_dict() for s in stats])
        return
    table = Table(title=title)
    for column in ("tenant", "items", "bytes", "threads", "checkpoints", "last write"):
        table.add_column(column)
    for s in stats:
        table.add_row(s.tenant, str(s.items), str(s.bytes), str(s.threads), str(s.checkpoints), (s.last_write or "-")[:19])
    console.print(table)


@tenant_app.command("stats")
def tenant_stats_cmd(
    tenant: Annotated[str, typer.Argument(help="The tenant (assistant_id).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the stats as JSON.")] = False,
) -> None:
    """One tenant's items, bytes, threads, checkpoints and last write; its usage against each quota."""
    from memory.db import connection
    from memory.quotas import tenant_quota
    from memory.tenants import tenant_stats

    try:
        with _open_service() as svc, connection(svc.pool) as conn:
            stats = tenant_stats(conn, tenant)
            quota = tenant_quota(conn, tenant)
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        _print_json({**stats.to_dict(), "quota": quota.to_dict()})
    else:
        _print_tenant_stats([stats], False, f"Tenant {tenant}")
        table = Table(title=f"Quotas of {tenant}")
        for column in ("limit", "usage", "maximum"):
            table.add_column(column)
        for row in quota.rows():
            table.add_row(*row)
        console.print(table)


@tenant_app.command("export")
def tenant_export(
    tenant: Annotated[str, typer.Argument(help="The tenant (assistant_id).")],
    out: Annotated[str, typer.Option("--out", "-o", help="The bundle file to write.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the bundle's manifest as JSON.")] = False,
) -> None:
    """Write the tenant's memory items (and vectors) and checkpoint threads to one bundle file."""
    from pathlib import Path

    from memory.db import connection
    from memory.tenants import export_tenant

    try:
        with _open_service() as svc, connection(svc.pool) as conn, _Progress(as_json) as step:
            manifest = export_tenant(conn, tenant, Path(out), on_step=step)
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        _print_json(manifest)
        return
    rows = {name: meta["rows"] for name, meta in manifest["sections"].items()}
    console.print(
        f"exported {tenant} to {out}: {rows['items']} items, {rows['vectors']} vectors, {manifest['threads']} threads "
        f"({rows['checkpoints']} checkpoints)",
        markup=False, highlight=False, soft_wrap=True,
    )


@tenant_app.command("import")
def tenant_import(
    file: Annotated[str, typer.Argument(help="A bundle from `memory tenant export`.")],
    as_tenant: Annotated[Optional[str], typer.Option("--as", help="Import as this tenant (a clone with new thread ids).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="merge: keep the newer item; replace: remove the tenant's data first.")] = "merge",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Change nothing; print what would change.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Verify a bundle and import it in one transaction; other tenants are never touched."""
    from pathlib import Path

    from memory.db import connection
    from memory.tenants import import_tenant

    try:
        with _open_service() as svc, connection(svc.pool) as conn, _Progress(as_json) as step:
            report = import_tenant(
                conn, Path(file), as_tenant=as_tenant, mode=mode, dry_run=dry_run,
                legal_hold=svc.policy.legal_hold, embed=svc.embedder(), on_step=step,
            )
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        _print_json(report.to_dict())
        return
    verb = "would import" if dry_run else "imported"
    removed = f"removed {sum(report.removed.values())} rows first; " if report.removed else ""
    console.print(
        f"{verb} {report.source_tenant} as {report.tenant} ({report.mode}): {removed}items {report.items_inserted} new, "
        f"{report.items_updated} updated, {report.items_kept} kept (newer here); {report.vectors + report.vectors_embedded} vectors"
        f"{f' ({report.vectors_embedded} embedded here)' if report.vectors_embedded else ''}; "
        f"{report.threads} threads, {report.checkpoints_inserted} new checkpoints",
        markup=False, highlight=False, soft_wrap=True,
    )


@tenant_app.command("delete")
def tenant_delete(
    tenant: Annotated[str, typer.Argument(help="The tenant (assistant_id) to erase.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm the erasure.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the receipt as JSON.")] = False,
) -> None:
    """Erase the tenant's memory items, vectors and checkpoint threads; record it in the erasure ledger."""
    from memory.db import connection
    from memory.tenancy import validate_tenant_id
    from memory.tenants import delete_tenant

    try:
        validate_tenant_id(tenant, "tenant")
        if not yes:
            raise MemoryServiceError(f"erasing tenant {tenant!r} cannot be undone; pass --yes to confirm")
        with _open_service() as svc, connection(svc.pool) as conn, _Progress(as_json) as step:
            receipt = delete_tenant(
                conn, tenant, legal_hold=svc.policy.legal_hold, on_step=step, receipts_dir=svc.settings.backup_dir
            )
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        _print_json(receipt)
        return
    counts = ", ".join(f"{n} {name}" for name, n in receipt["counts"].items())
    console.print(
        f"erased tenant {receipt['tenant']} at {receipt['erased_at']} (receipt {receipt['receipt']}): {counts}",
        markup=False, highlight=False, soft_wrap=True,
    )


@threads_app.command("unowned")
def threads_unowned(as_json: Annotated[bool, typer.Option("--json", help="Print the threads as JSON.")] = False) -> None:
    """Threads no tenant owns (left by an upgrade that could not attribute them): refused to every tenant."""
    from memory import ownership
    from memory.db import connection

    try:
        with _open_service() as svc, connection(svc.pool) as conn:
            rows = ownership.unattributed(conn)
    except MemoryServiceError as exc:
        fail(exc)
    if as_json:
        _print_json(rows)
        return
    table = Table(title="Unattributed threads")
    for column in ("thread_id", "checkpoints", "tenants named in metadata", "since"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["thread_id"], str(r["checkpoints"]), ", ".join(r["named_tenants"]) or "-", str(r["created_at"])[:19])
    console.print(table)


@threads_app.command("assign")
def threads_assign(
    thread_id: Annotated[str, typer.Argument(help="An unattributed thread (see `memory threads unowned`).")],
    tenant: Annotated[str, typer.Argument(help="The tenant (assistant_id) that owns it from now on.")],
) -> None:
    """Give an unattributed thread its owner; a thread a tenant already owns is never moved."""
    from memory import ownership
    from memory.db import connection
    from memory.tenancy import validate_tenant_id

    try:
        validate_tenant_id(tenant, "tenant")
        with _open_service() as svc, connection(svc.pool) as conn:
            if not ownership.assign(conn, thread_id, tenant):
                raise MemoryServiceError(
                    f"thread {thread_id!r} is not unattributed (it has an owner, or does not exist); nothing was changed"
                )
    except MemoryServiceError as exc:
        fail(exc)
    console.print(f"thread {thread_id} now belongs to {tenant}", markup=False, highlight=False)


# -- config ----------------------------------------------------------------------------------------


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print the file and every setting as JSON.")] = False,
) -> None:
    """Print the effective settings, each with its MEMORY_* variable and where its value came from
    (default, the settings file, or the environment). Passwords in URLs and secrets are masked."""
    from memory.settings import MemorySettings, config_file, effective_settings, setting_sources

    settings = MemorySettings.load()
    path = config_file()
    rows = effective_settings(settings, setting_sources())
    if as_json:
        _print_json({"file": str(path) if path else None, "settings": rows})
        return
    console.print(
        f"settings file: {path}" if path else "settings file: none found (MEMORY_CONFIG, ./config/memory.toml, "
        "the user config dir); code defaults",
        markup=False, highlight=False, soft_wrap=True,
    )
    table = Table(title="Effective settings")
    for column in ("setting", "value", "from", "variable"):
        table.add_column(column, overflow="fold")
    for row in rows:
        value = row["value"] if isinstance(row["value"], str) else json.dumps(row["value"])
        table.add_row(row["setting"], value, row["source"], row["env"])
    console.print(table, markup=False)


def run() -> None:  # pragma: no cover - console entry for `python -m memory`
    app(prog_name="memory")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
