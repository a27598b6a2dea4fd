"""Checkpoint pruning: delete idle threads, trim long histories, collect orphan writes and blobs.

`prune_checkpoints(conn, policy, now, dry_run)` makes three passes over LangGraph's checkpoint
tables (SQL in `memory.sql`, `PRUNE_*`), recorded in `memory_job_runs` like every job:

1. *idle threads*: threads whose newest checkpoint (`checkpoint->>'ts'`) is older than
   `idle_days` are deleted whole (checkpoints, blobs, writes), `thread_batch_size` threads per
   statement (one set-based statement per batch: its own transaction). An incremental run finds
   them along the ts index (threads with rows that became old since, then per thread: no newer
   row), a full pass by the newest `ts` of every thread (one read of the table); the batch's statement itself
   says which of its threads hold a newer row by then (a run wrote to them since): the batch is
   rolled back and made again without them, so they are kept.
2. *history trimming*: in each namespace of each longer thread, the latest `keep_latest`
   checkpoints are kept, and with them every ancestor their DeltaChannels are rebuilt from.
   A DeltaChannel (deep agents' `messages` and `files`) stores its value only every so often
   (a snapshot); in between, a checkpoint's value is its nearest ancestor's snapshot plus the
   writes of the checkpoints in between. So for each kept checkpoint and each delta channel it
   holds no value for, the parent chain is walked - exactly as LangGraph's loader walks it -
   down to the checkpoint that holds one, and all of that stays. Blobs stay while any kept
   checkpoint's `channel_versions` names them. One REPEATABLE READ transaction per thread: what
   a run saves meanwhile is neither seen nor deleted; a thread whose rows a run changes under it
   is retried, then skipped (counted as `skipped_busy`), never half-trimmed.
3. *orphans*: writes of a checkpoint that no longer exists and blobs no checkpoint references,
   only where the thread has moved past them (a run saves writes and blobs before their
   checkpoint commits: those are not orphans).

Passes 2 and 3 are incremental: a run looks only at the threads with a checkpoint written since
the last successful run (its high-water mark, a checkpoint `ts` kept in `memory_job_watermarks`,
set back by `MARK_MARGIN` to cover writers' clocks and checkpoints committed late), so a run
with nothing new costs a few index probes at any table size. A full pass over every thread is
made on the first run, with `full=True` (`memory jobs run prune-checkpoints --full`), and when
the last one is older than `full_pass_days`: it finds what no new checkpoint points at (orphans
of a crashed delete, threads trimmed with a new `keep_latest`). Pass 1 is incremental too: it
walks the ts index from the last run's cutoff (less `MARK_MARGIN`, its own mark `IDLE_MARK`) to
this run's, since every thread idle before that was deleted then; rows only a full pass finds
are threads whose legal hold was lifted or that got an owner since, and threads imported with
old checkpoints. Only a successful run of all three passes over every tenant moves the marks; a
dry run or a one-tenant run leaves them.

Threads of tenants under legal hold (by their owner in `memory_threads`) and threads nobody owns
are never touched; `tenant` limits every pass to one tenant's threads (a held one is refused;
who owns a thread: `memory.sql._PRUNE_OWNED`). A dry run computes the same and deletes nothing.

Batches of a real run commit without waiting for the disk (`runs.batch_settings`); the run's
record, committed normally at the end, flushes them all before the run shows as succeeded.

What trimming leaves: the kept checkpoints load exactly as before (`graph.get_state`), and the
thread goes on. The ancestors kept only as a delta channel's replay base are still listed by
`get_state_history`; the oldest of them may show another delta channel rebuilt only from what
was kept. Threads whose delta channels have no snapshot yet (a deep agent writes one every 50
updates of a channel, or every `LANGGRAPH_DELTA_MAX_SUPERSTEPS_SINCE_SNAPSHOT` supersteps)
cannot be trimmed below their root: all of it is needed, so all of it stays.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from jobs import runs
from jobs.registry import Job, plural
from jobs.report import FAILED, JobReport
from memory import sql
from memory.db import translate
from memory.errors import MemoryServiceError
from memory.retention import refuse_held
from memory.tenancy import validate_tenant_id

JOB = "prune_checkpoints"
IDLE_MARK = f"{JOB}.idle"
"""The idle pass's own mark (a row of `memory_job_watermarks`): the last run's cutoff, less `MARK_MARGIN`."""

FULL_FIND_WORK_MEM = "64MB"
"""Memory for a full pass's idle-thread find (one hash entry per thread: about 500,000 threads
before it spills to disk; the server default, 4 MB, spills from about 30,000)."""

DEFAULT_THREAD_BATCH_SIZE = 1000
"""Idle threads deleted per statement (a deep-agent thread holds tens of rows per turn)."""

MARK_MARGIN = timedelta(minutes=10)
"""How far before a run's start its high-water mark is set: the next run looks again at threads
written in that window (writers' clocks behind the database's, checkpoints committed late)."""

PASSES = ("idle", "trim", "orphans")
"""The three passes, in the order a run makes them."""

NO_TENANT = "(no tenant)"
"""Where a thread whose checkpoints name no `assistant_id` is counted."""

TRIM_ATTEMPTS = 3
"""Tries per thread when a run changes its rows mid-trim; then the thread waits for the next run."""

BUSY_ERRORS = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable)


class PruneFailed(MemoryServiceError):
    """The checkpoint pruning failed."""


@dataclass(frozen=True)
class PrunePolicy:
    """`idle_days` (0: never delete idle threads), `keep_latest` per namespace, held tenants,
    `full_pass_days` between full passes (0: every run is one)."""

    idle_days: float = 30
    keep_latest: int = 20
    legal_hold: frozenset[str] = frozenset()
    thread_batch_size: int = DEFAULT_THREAD_BATCH_SIZE
    full_pass_days: float = 7

    def __post_init__(self) -> None:
        if self.idle_days < 0:
            raise ValueError(f"idle_days must be >= 0 (0 keeps idle threads), got {self.idle_days}")
        if self.keep_latest < 1:
            raise ValueError(f"keep_latest must be at least 1, got {self.keep_latest}")
        if self.thread_batch_size < 1:
            raise ValueError(f"thread_batch_size must be at least 1, got {self.thread_batch_size}")
        if self.full_pass_days < 0:
            raise ValueError(f"full_pass_days must be >= 0 (0: every run is a full pass), got {self.full_pass_days}")

    def held(self, tenants: Iterable[str]) -> bool:
        return any(tenant in self.legal_hold for tenant in tenants)


# -- the trim plan (pure: rows in, what to delete out) ----------------------------------------


@dataclass(frozen=True)
class CheckpointRow:
    """What the plan needs of one checkpoint (`PRUNE_THREAD_CHECKPOINTS`)."""

    ns: str
    id: str
    parent: str | None
    v: int
    versions: dict[str, str]
    inline: frozenset[str]
    """Channels with a non-null value in the checkpoint's own `channel_values`."""
    markers: frozenset[str]
    """Channels whose inline value is `true`: a DeltaChannel snapshot's marker when a blob is behind it."""
    delta_counters: frozenset[str]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CheckpointRow:
        return cls(
            row["checkpoint_ns"],
            row["checkpoint_id"],
            row["parent_checkpoint_id"],
            row["v"],
            {key: str(value) for key, value in row["versions"].items()},
            frozenset(row["inline"]),
            frozenset(row["markers"]),
            frozenset(row["delta_counters"]),
        )


@dataclass
class NamespacePlan:
    ns: str
    delete: list[str] = field(default_factory=list)
    kept_for_replay: int = 0
    """Checkpoints older than the latest `keep` that stay because a kept one replays from them."""
    garbage_blobs: list[tuple[str, str]] = field(default_factory=list)
    """(channel, version) only deleted checkpoints used."""


def trim_plan(rows: Sequence[CheckpointRow], blobs: set[tuple[str, str, str]], keep: int) -> list[NamespacePlan]:
    """Per namespace: which checkpoints and blobs go when the latest `keep` stay, with what they replay from.

    `blobs` are the thread's (namespace, channel, version) holding a value (type not 'empty').
    """
    plans = []
    for ns in sorted({row.ns for row in rows}):
        in_ns = sorted((row for row in rows if row.ns == ns), key=lambda row: row.id)
        if len(in_ns) <= keep:
            continue
        by_id = {row.id: row for row in in_ns}
        targets = in_ns[-keep:]
        required = {row.id for row in targets} | _replay_bases(targets, by_id, blobs)
        deleted = [row for row in in_ns if row.id not in required]
        if not deleted:
            continue
        kept_versions = {item for row in in_ns if row.id in required for item in row.versions.items()}
        freed = {item for row in deleted for item in row.versions.items()}
        plans.append(
            NamespacePlan(
                ns,
                [row.id for row in deleted],
                len(required) - len(targets),
                sorted(freed - kept_versions),
            )
        )
    return plans


def _replay_bases(
    targets: Sequence[CheckpointRow], by_id: dict[str, CheckpointRow], blobs: set[tuple[str, str, str]]
) -> set[str]:
    """Ancestors the targets' delta channels are rebuilt from: the walk LangGraph's loader makes
    (from the parent down to the first checkpoint holding a value for the channel, inclusive)."""

    def stored(row: CheckpointRow, channel: str) -> bool:
        version = row.versions.get(channel)
        return channel in row.inline or (version is not None and (row.ns, channel, version) in blobs)

    delta_channels = set().union(*(row.delta_counters for row in by_id.values())) | {
        channel
        for row in by_id.values()
        for channel in row.markers
        if channel in row.versions and (row.ns, channel, row.versions[channel]) in blobs
    }
    required: set[str] = set()
    walked: dict[str, set[str]] = {channel: set() for channel in delta_channels}
    for target in targets:
        if target.v < 4 and target.parent in by_id:  # pending sends of pre-v4 checkpoints live on the parent
            required.add(target.parent)
        for channel in delta_channels:
            if channel not in target.versions or stored(target, channel):
                continue
            current = target.parent
            while current in by_id and current not in walked[channel]:
                walked[channel].add(current)
                required.add(current)
                if stored(by_id[current], channel):
                    break
                current = by_id[current].parent
    return required


# -- the job ------------------------------------------------------------------------------------


def _tenant_of(tenants: Iterable[str]) -> str:
    named = sorted(tenant for tenant in tenants if tenant)
    return named[0] if named else NO_TENANT


COUNTS = ("idle_threads", "trimmed_threads", "checkpoints", "writes", "blobs", "kept_for_replay",
          "orphan_writes", "orphan_blobs", "held_threads", "skipped_busy", "batches", "batches_redone",
          "full_pass", "changed_threads")
"""Every count a report holds, zero when nothing was found (the CLI and /metrics read them)."""


@dataclass
class _Run:
    """One run's connection, settings and report, shared by the three passes."""

    conn: psycopg.Connection
    report: JobReport
    policy: PrunePolicy
    tenant: str | None
    dry_run: bool
    stop: threading.Event | None
    on_batch: Callable[[JobReport], None] | None
    threads: list[str] | None = None
    """The threads the trim and orphan passes look at: None for every thread (a full pass)."""
    idle_floor: str | None = None
    """Where an incremental idle pass starts along the ts index (None: a full pass, from the start)."""
    idle_cutoff: datetime | None = None
    """This run's idle cutoff, once its idle pass has run."""
    idle: set[str] = field(default_factory=set)
    """Threads the idle pass took (in a dry run still there: the trim pass leaves them out)."""
    held: set[str] = field(default_factory=set)

    def held_back(self, thread_id: str, tenants: Iterable[str]) -> bool:
        """Whether the thread belongs to a tenant under legal hold (each counted once per run)."""
        if not self.policy.held(tenants):
            return False
        if thread_id not in self.held:
            self.held.add(thread_id)
            self.report.bump("held_threads")
        return True

    def fetch(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return runs.fetch_unprepared(self.conn, query, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction, its length counted in `longest_transaction_s`."""
        started = time.perf_counter()
        try:
            with self.conn.transaction():
                yield
        finally:
            elapsed = time.perf_counter() - started
            self.report.longest_transaction_s = max(self.report.longest_transaction_s, elapsed)

    def interrupted(self) -> bool:
        """Whether to stop now; the first time `stop` is seen, the report says so."""
        if self.report.status == FAILED:
            return True
        if self.stop is None or not self.stop.is_set():
            return False
        self.report.status = FAILED
        self.report.error = (
            f"interrupted by shutdown after {self.report.counts['batches']} batches "
            f"({self.report.counts['checkpoints']} checkpoints); the next run finishes the work"
        )
        return True

    def progressed(self) -> None:
        if self.on_batch is not None:
            self.on_batch(self.report)

    def add_per_thread(self, name: str, rows: list[dict[str, Any]], tenant_of: dict[str, str]) -> None:
        """Count rows returned as (thread_id[, n]) under their threads' tenants."""
        for row in rows:
            self.report.add(tenant_of.get(row["thread_id"], NO_TENANT), name, row.get("n", 1))


def prune_checkpoints(
    conn: psycopg.Connection,
    policy: PrunePolicy,
    now: datetime | None = None,
    dry_run: bool = False,  # noqa: FBT001, FBT002
    *,
    tenant: str | None = None,
    passes: Collection[str] = PASSES,
    full: bool = False,
    stop: threading.Event | None = None,
    on_batch: Callable[[JobReport], None] | None = None,
) -> JobReport:
    """Delete (or, dry, count) idle threads, trimmed history and orphans as of `now` (default: now).

    `conn` is an autocommit connection (each batch and each thread is its own transaction);
    `tenant` limits the run to one tenant's threads; `passes` picks some of "idle", "trim",
    "orphans" (default all three, in that order); `full` makes the trim and orphan passes look
    at every thread, not only those written since the last run; `stop`, when set, ends the run
    after the batch in progress, recorded as failed ("interrupted"). Raises `JobBusy` when
    another run holds the job's lock.
    """
    if tenant is not None:
        refuse_held(validate_tenant_id(tenant, "tenant"), policy.legal_hold, "prune-checkpoints --tenant")
    unknown = sorted(set(passes) - set(PASSES))
    if unknown:
        raise ValueError(f"unknown pass {', '.join(unknown)}; the passes are {', '.join(PASSES)}")
    try:
        with runs.recorded_run(conn, JOB, dry_run=dry_run) as report:
            if now is None:
                now = runs.fetch_unprepared(conn, sql.DATABASE_NOW, {})[0]["now"]
            report.counts.update(dict.fromkeys(COUNTS, 0))
            run = _Run(conn, report, policy, tenant, dry_run, stop, on_batch)
            mark = _start_mark(run, now, full=full)
            with runs.batch_settings(conn, dry_run=dry_run):
                for name, run_pass in (("idle", _delete_idle_threads), ("trim", _trim_histories), ("orphans", _collect_orphans)):
                    if name not in passes:
                        continue
                    if run.interrupted():
                        break
                    run_pass(run, now)
            if not dry_run and tenant is None and set(passes) == set(PASSES) and report.status != FAILED:
                full_pass_at = now if run.threads is None else None
                run.fetch(sql.PRUNE_SET_MARK, {"job": JOB, "mark": mark, "full_pass_at": full_pass_at})
                if run.idle_cutoff is not None:
                    idle_mark = _ts(run.idle_cutoff - MARK_MARGIN)
                    run.fetch(sql.PRUNE_SET_MARK, {"job": IDLE_MARK, "mark": idle_mark, "full_pass_at": full_pass_at})
            return report
    except psycopg.Error as exc:
        raise PruneFailed(str(translate(exc, f"{JOB} failed"))) from exc


def _start_mark(run: _Run, now: datetime, *, full: bool) -> str:
    """Which threads this run's trim and orphan passes look at (`run.threads`); returns the mark
    the next run starts from: this run's start less `MARK_MARGIN`, as LangGraph writes `ts`."""
    mark = _ts(now - MARK_MARGIN)
    rows = run.fetch(sql.PRUNE_MARK, {"job": JOB})
    last = rows[0] if rows else None
    due = last is None or last["full_pass_at"] is None or run.policy.full_pass_days == 0 or (
        now - last["full_pass_at"] >= timedelta(days=run.policy.full_pass_days)
    )
    if full or due:
        run.report.bump("full_pass")
        return mark
    run.threads = [row["thread_id"] for row in run.fetch(sql.PRUNE_CHANGED_THREADS, {"mark": last["mark"], "tenant": run.tenant})]
    idle = run.fetch(sql.PRUNE_MARK, {"job": IDLE_MARK})
    run.idle_floor = idle[0]["mark"] if idle else None
    run.report.bump("changed_threads", len(run.threads))
    return mark


def _ts(moment: datetime) -> str:
    """A time as LangGraph writes a checkpoint's `ts` (UTC isoformat), so the two compare as text."""
    return moment.astimezone(timezone.utc).isoformat()


# 1. idle threads ----------------------------------------------------------------------------


def _delete_idle_threads(run: _Run, now: datetime) -> None:
    if run.policy.idle_days <= 0:
        return
    run.idle_cutoff = now - timedelta(days=run.policy.idle_days)
    cutoff = _ts(run.idle_cutoff)
    floor = run.idle_floor  # at or past the cutoff (idle_days raised): nothing new can be idle
    params = {"cutoff": cutoff, "tenant": run.tenant, "floor": floor}
    if floor is not None:
        found = run.fetch(sql.PRUNE_IDLE_THREADS, params)
    else:
        with run.conn.transaction():  # one statement; the memory setting ends with it
            run.fetch(sql.PRUNE_FIND_MEMORY, {"work_mem": FULL_FIND_WORK_MEM})
            found = run.fetch(sql.PRUNE_IDLE_THREADS_FULL, params)
    idle = [
        (row["thread_id"], _tenant_of(row["tenants"]))
        for row in found
        if not run.held_back(row["thread_id"], row["tenants"])
    ]
    for start in range(0, len(idle), run.policy.thread_batch_size):
        if run.interrupted():
            return
        for row in _idle_batch(run, idle[start : start + run.policy.thread_batch_size], cutoff):
            for name in ("idle_threads", "checkpoints", "writes", "blobs"):
                run.report.add(row["tenant"], name, row[name])
            run.idle.update(row["threads"])
        run.report.bump("batches")
        run.progressed()


class _Written(Exception):  # noqa: N818 (not an error: a batch to make again)
    """Threads of a batch a run wrote to since they were selected."""

    def __init__(self, threads: set[str]) -> None:
        super().__init__(f"{len(threads)} threads written since they were selected")
        self.threads = threads


def _idle_batch(run: _Run, batch: list[tuple[str, str]], cutoff: str) -> list[dict[str, Any]]:
    """Delete (dry: count) a batch of idle threads in one transaction; its rows per tenant.

    The statement says which threads hold a checkpoint at or after the cutoff by now (a run wrote
    to them since they were selected): the batch is rolled back and made again without them."""
    statement = sql.PRUNE_COUNT_IDLE if run.dry_run else sql.PRUNE_DELETE_IDLE
    while batch:
        params = {"threads": [thread for thread, _ in batch], "tenants": [tenant for _, tenant in batch], "cutoff": cutoff}
        try:
            with run.transaction():
                rows = run.fetch(statement, params)
                written = {thread for row in rows for thread in row["live"]}
                if written:
                    raise _Written(written)
            return rows
        except _Written as exc:
            run.report.bump("batches_redone")
            batch = [(thread, tenant) for thread, tenant in batch if thread not in exc.threads]
    return []


# 2. history trimming ------------------------------------------------------------------------


def _trim_histories(run: _Run, now: datetime) -> None:  # noqa: ARG001 (every pass takes `now`)
    if run.threads == []:
        return
    candidates: dict[str, set[str]] = {}
    params = {"keep": run.policy.keep_latest, "tenant": run.tenant, "threads": run.threads}
    for row in run.fetch(sql.PRUNE_LONG_THREADS, params):
        if row["thread_id"] not in run.idle:
            candidates.setdefault(row["thread_id"], set()).update(row["tenants"])
    for thread_id, tenants in candidates.items():
        if run.interrupted():
            return
        if run.held_back(thread_id, tenants):
            continue
        for attempt in range(1, TRIM_ATTEMPTS + 1):
            try:
                _trim_thread(run, thread_id, _tenant_of(tenants))
                break
            except BUSY_ERRORS:
                if attempt == TRIM_ATTEMPTS:
                    run.report.bump("skipped_busy")
                else:
                    time.sleep(0.05 * attempt)
        run.progressed()


def _trim_thread(run: _Run, thread_id: str, tenant: str) -> None:
    """One thread in one REPEATABLE READ transaction: plan from its snapshot, then delete."""
    counts = dict.fromkeys(("checkpoints", "writes", "blobs", "kept_for_replay"), 0)
    params = {"thread_id": thread_id}
    with run.transaction():
        run.fetch(sql.PRUNE_SNAPSHOT, {})
        run.fetch(sql.PRUNE_LOCK_TIMEOUT, {})
        rows = [CheckpointRow.from_row(row) for row in run.fetch(sql.PRUNE_THREAD_CHECKPOINTS, params)]
        blob_rows = run.fetch(sql.PRUNE_THREAD_BLOBS, params)
        valued = {(row["checkpoint_ns"], row["channel"], row["version"]) for row in blob_rows if row["type"] != "empty"}
        present = {(row["checkpoint_ns"], row["channel"], row["version"]) for row in blob_rows}
        plans = trim_plan(rows, valued, run.policy.keep_latest)
        for plan in plans:
            where = {**params, "ns": plan.ns, "ids": plan.delete}
            counts["checkpoints"] += len(plan.delete)
            counts["kept_for_replay"] += plan.kept_for_replay
            if run.dry_run:
                counts["writes"] += run.fetch(sql.PRUNE_COUNT_TRIM_WRITES, where)[0]["n"]
                counts["blobs"] += sum((plan.ns, channel, version) in present for channel, version in plan.garbage_blobs)
                continue
            with run.conn.cursor() as cur:
                cur.execute(sql.PRUNE_TRIM_WRITES, where, prepare=False)
                counts["writes"] += cur.rowcount
                cur.execute(sql.PRUNE_TRIM_CHECKPOINTS, where, prepare=False)
                if cur.rowcount != len(plan.delete):  # rows changed under the snapshot: roll back, retry
                    raise psycopg.errors.SerializationFailure(f"thread {thread_id} changed while it was trimmed")
                cur.execute(sql.PRUNE_TRIM_PARENTS, where, prepare=False)
                if plan.garbage_blobs:
                    channels, versions = (list(column) for column in zip(*plan.garbage_blobs))
                    cur.execute(sql.PRUNE_TRIM_BLOBS, {**where, "channels": channels, "versions": versions}, prepare=False)
                    counts["blobs"] += cur.rowcount
    if plans:
        run.report.add(tenant, "trimmed_threads")
        for name, amount in counts.items():
            run.report.add(tenant, name, amount)


# 3. orphans ---------------------------------------------------------------------------------


def _collect_orphans(run: _Run, now: datetime) -> None:  # noqa: ARG001 (every pass takes `now`)
    if run.threads == []:
        return
    params = {"tenant": run.tenant, "threads": run.threads}
    writes = [row for row in run.fetch(sql.PRUNE_ORPHAN_WRITES, params) if not run.policy.held(row["tenants"])]
    blobs = [row for row in run.fetch(sql.PRUNE_ORPHAN_BLOBS, params) if not run.policy.held(row["tenants"])]
    tenant_of = {row["thread_id"]: _tenant_of(row["tenants"]) for row in (*writes, *blobs)}
    if run.dry_run:
        run.add_per_thread("orphan_writes", writes, tenant_of)
        run.add_per_thread("orphan_blobs", [{"thread_id": row["thread_id"]} for row in blobs], tenant_of)
        return
    with run.transaction():
        if writes:
            keys = {"threads": [r["thread_id"] for r in writes], "namespaces": [r["checkpoint_ns"] for r in writes],
                    "ids": [r["checkpoint_id"] for r in writes]}
            run.add_per_thread("orphan_writes", run.fetch(sql.PRUNE_DELETE_ORPHAN_WRITES, keys), tenant_of)
        if blobs:
            keys = {"threads": [r["thread_id"] for r in blobs], "namespaces": [r["checkpoint_ns"] for r in blobs],
                    "channels": [r["channel"] for r in blobs], "versions": [r["version"] for r in blobs]}
            run.add_per_thread("orphan_blobs", run.fetch(sql.PRUNE_DELETE_ORPHAN_BLOBS, keys), tenant_of)
    run.report.bump("batches")


__all__ = ["JOB", "CheckpointRow", "NamespacePlan", "PruneFailed", "PrunePolicy", "prune_checkpoints", "trim_plan"]


# -- registry entry (jobs/registry.py) ------------------------------------------------------------


def _bind(settings: Any, database_url: str | None = None):  # noqa: ARG001 - works on the connection alone
    from functools import partial

    return partial(
        prune_checkpoints,
        policy=PrunePolicy(
            idle_days=settings.checkpoints_delete_threads_idle_days,
            keep_latest=settings.checkpoints_keep_latest,
            legal_hold=settings.retention_policy().legal_hold,
            full_pass_days=settings.checkpoints_full_pass_days,
        ),
    )


def summary(report: JobReport) -> str:
    counts = report.counts
    verb = "would delete" if report.dry_run else "deleted"
    return (
        f"{verb} {plural(counts.get('idle_threads', 0), 'idle thread')}; trimmed "
        f"{plural(counts.get('trimmed_threads', 0), 'thread')} ({counts.get('kept_for_replay', 0)} older checkpoints kept "
        f"as delta replay bases); in all {plural(counts.get('checkpoints', 0), 'checkpoint')}, "
        f"{plural(counts.get('writes', 0), 'write')}, {plural(counts.get('blobs', 0), 'blob')}, plus "
        f"{counts.get('orphan_writes', 0)} orphan writes and {counts.get('orphan_blobs', 0)} orphan blobs; "
        f"{plural(counts.get('held_threads', 0), 'thread')} under legal hold left alone, "
        f"{plural(counts.get('skipped_busy', 0), 'busy thread')} left for the next run"
    )


def done(report: JobReport) -> str:
    counts = report.counts
    return (
        f"{plural(counts.get('checkpoints', 0), 'checkpoint')} ({counts.get('idle_threads', 0)} idle threads, "
        f"{counts.get('trimmed_threads', 0)} trimmed)"
    )


def progress(report: JobReport) -> str:
    counts = report.counts
    return (f"{JOB}: {plural(counts.get('idle_threads', 0), 'idle thread')}, {counts.get('trimmed_threads', 0)} "
            f"threads trimmed, {plural(counts.get('checkpoints', 0), 'checkpoint')}")


SPEC = Job(
    name=JOB,
    schedule_key="prune_checkpoints",
    deletes="idle checkpoint threads, checkpoints beyond keep_latest ([checkpoints]), orphan writes and blobs",
    bind=_bind,
    summary=summary,
    done=done,
    progress=progress,
    tenant_columns=("idle_threads", "trimmed_threads", "checkpoints", "writes", "blobs"),
)
