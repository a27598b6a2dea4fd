"""Checkpoint pruning: delete idle threads, trim long histories, collect orphan writes and blobs.

`prune_checkpoints(conn, policy, now, dry_run)` makes three passes over LangGraph's checkpoint
tables (SQL in `memory.sql`, `PRUNE_*`), recorded in `memory_job_runs` like every job:

1. *idle threads*: threads whose newest checkpoint (`checkpoint->>'ts'`) is older than
   `idle_days` are deleted whole (checkpoints, blobs, writes), `thread_batch_size` threads per
   transaction. They are found along the ts index (old rows with no newer row in their thread)
   and checked again inside each batch's transaction: a thread a run wrote to since is kept.
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

Threads of tenants under legal hold (by their owner in `memory_threads`) and threads nobody owns
are never touched; `tenant` limits every pass to one tenant's threads (a held one is refused). A dry run computes the same and deletes nothing.

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
from jobs.report import FAILED, JobReport
from memory import sql
from memory.errors import MemoryServiceError
from memory.retention import refuse_held
from memory.tenancy import validate_tenant_id

JOB = "prune_checkpoints"
DEFAULT_THREAD_BATCH_SIZE = 200
"""Idle threads deleted per transaction (a deep-agent thread holds tens of rows per turn)."""

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
    """`idle_days` (0: never delete idle threads), `keep_latest` per namespace, held tenants."""

    idle_days: float = 30
    keep_latest: int = 20
    legal_hold: frozenset[str] = frozenset()
    thread_batch_size: int = DEFAULT_THREAD_BATCH_SIZE

    def __post_init__(self) -> None:
        if self.idle_days < 0:
            raise ValueError(f"idle_days must be >= 0 (0 keeps idle threads), got {self.idle_days}")
        if self.keep_latest < 1:
            raise ValueError(f"keep_latest must be at least 1, got {self.keep_latest}")
        if self.thread_batch_size < 1:
            raise ValueError(f"thread_batch_size must be at least 1, got {self.thread_batch_size}")

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
          "orphan_writes", "orphan_blobs", "held_threads", "skipped_busy", "batches")
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
    stop: threading.Event | None = None,
    on_batch: Callable[[JobReport], None] | None = None,
) -> JobReport:
    """Delete (or, dry, count) idle threads, trimmed history and orphans as of `now` (default: now).

    `conn` is an autocommit connection (each batch and each thread is its own transaction);
    `tenant` limits the run to one tenant's threads; `passes` picks some of "idle", "trim",
    "orphans" (default all three, in that order); `stop`, when set, ends the run after the
    batch in progress, recorded as failed ("interrupted"). Raises `JobBusy` when another run
    holds the job's lock.
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
            for name, run_pass in (("idle", _delete_idle_threads), ("trim", _trim_histories), ("orphans", _collect_orphans)):
                if name not in passes:
                    continue
                if run.interrupted():
                    break
                run_pass(run, now)
            return report
    except psycopg.errors.UndefinedTable as exc:
        raise PruneFailed(f"{JOB} failed: {runs.one_line(exc)}; run `memory db upgrade` to create the tables") from exc
    except psycopg.Error as exc:
        raise PruneFailed(f"{JOB} failed: {runs.one_line(exc)}") from exc


# 1. idle threads ----------------------------------------------------------------------------


def _delete_idle_threads(run: _Run, now: datetime) -> None:
    if run.policy.idle_days <= 0:
        return
    cutoff = (now - timedelta(days=run.policy.idle_days)).astimezone(timezone.utc).isoformat()
    tenant_of: dict[str, str] = {}
    for row in run.fetch(sql.PRUNE_IDLE_THREADS, {"cutoff": cutoff, "tenant": run.tenant}):
        if not run.held_back(row["thread_id"], row["tenants"]):
            tenant_of[row["thread_id"]] = _tenant_of(row["tenants"])
    idle = list(tenant_of)
    statements = sql.PRUNE_COUNT_THREADS if run.dry_run else sql.PRUNE_DELETE_THREADS
    for start in range(0, len(idle), run.policy.thread_batch_size):
        if run.interrupted():
            return
        batch = idle[start : start + run.policy.thread_batch_size]
        with run.transaction():
            revived = {row["thread_id"] for row in run.fetch(sql.PRUNE_REVIVED_THREADS, {"threads": batch, "cutoff": cutoff})}
            batch = [thread for thread in batch if thread not in revived]
            deleted = {name: run.fetch(statement, {"threads": batch}) for name, statement in statements.items()}
        for name, rows in deleted.items():
            run.add_per_thread(name, rows, tenant_of)
        run.add_per_thread("idle_threads", [{"thread_id": thread} for thread in batch], tenant_of)
        run.idle.update(batch)
        run.report.bump("batches")
        run.progressed()


# 2. history trimming ------------------------------------------------------------------------


def _trim_histories(run: _Run, now: datetime) -> None:  # noqa: ARG001 (every pass takes `now`)
    candidates: dict[str, set[str]] = {}
    for row in run.fetch(sql.PRUNE_LONG_THREADS, {"keep": run.policy.keep_latest, "tenant": run.tenant}):
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
    params = {"tenant": run.tenant}
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
