"""Prometheus metrics of `memory serve` through `prometheus_client`, in a registry per app.

The job metrics keep the names and meaning they had (README, "Retention"): runs by job and status,
ticks skipped, rows deleted, run durations, longest transaction, last success on any replica
(read from `memory_job_runs` at scrape time), and `memory_database_up`. The API adds request
counts and latencies by route (route templates, never raw paths: the label set stays bounded).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from jobs import runs
from jobs.scheduler import JobMetrics

logger = logging.getLogger(__name__)

DELETED_KINDS = {"ttl_cleanup": ("items", "vectors"), "prune_checkpoints": ("checkpoints", "writes", "blobs")}
"""What each job deletes, as `kind` labels of memory_job_rows_deleted_total."""


class JobCollector(Collector):
    """The scheduler's `JobMetrics` plus the database's last successes, collected at scrape time.

    `database` returns `(last_success_by_job, database_up)`; it is called once per scrape.
    """

    def __init__(
        self, metrics: JobMetrics, jobs: list[str], database: Callable[[], tuple[dict[str, float], bool]]
    ) -> None:
        self.metrics = metrics
        self.jobs = jobs
        self.database = database

    def collect(self) -> Iterable[Metric]:
        snap = self.metrics.snapshot()
        last_success, database_up = self.database()
        jobs = self.jobs

        up = GaugeMetricFamily("memory_database_up", "1 when the database answered the last check.")
        up.add_metric([], 1.0 if database_up else 0.0)
        yield up

        runs_total = CounterMetricFamily("memory_job_runs", "Job runs by this process, by outcome.", labels=["job", "status"])
        for job in jobs:
            for status in (runs.SUCCEEDED, runs.FAILED):
                runs_total.add_metric([job, status], float(snap.runs.get((job, status), 0)))
        yield runs_total

        skipped = CounterMetricFamily(
            "memory_job_ticks_skipped",
            "Ticks this process skipped: busy (another replica held the lock) or tick_done (another replica ran it).",
            labels=["job", "reason"],
        )
        for job in jobs:
            for reason in ("busy", "tick_done"):
                skipped.add_metric([job, reason], float(snap.skipped.get((job, reason), 0)))
        yield skipped

        deleted = CounterMetricFamily(
            "memory_job_rows_deleted",
            "Rows deleted by this process's runs (items and their vectors; checkpoints, writes and blobs).",
            labels=["job", "kind"],
        )
        for job in jobs:
            for kind in DELETED_KINDS.get(job, ()):
                deleted.add_metric([job, kind], float(snap.deleted.get((job, kind), 0)))
        yield deleted

        duration = SummaryMetricFamily("memory_job_duration_seconds", "Duration of this process's job runs.", labels=["job"])
        for job in jobs:
            duration.add_metric([job], count_value=snap.duration_count.get(job, 0), sum_value=snap.duration_sum.get(job, 0.0))
        yield duration

        last = GaugeMetricFamily("memory_job_last_duration_seconds", "Duration of this process's last run of the job.", labels=["job"])
        longest = GaugeMetricFamily(
            "memory_job_longest_transaction_seconds",
            "Longest single batch transaction in this process's last run of the job.",
            labels=["job"],
        )
        success = GaugeMetricFamily(
            "memory_job_last_success_timestamp_seconds",
            "Unix time the job last finished a real run successfully, on any replica.",
            labels=["job"],
        )
        successes = {**snap.last_success, **last_success}
        for job in jobs:
            if job in snap.last_duration:
                last.add_metric([job], snap.last_duration[job])
            if job in snap.longest_transaction:
                longest.add_metric([job], snap.longest_transaction[job])
            if job in successes:
                success.add_metric([job], successes[job])
        yield last
        yield longest
        yield success


ROUTES = frozenset(
    {"/health", "/ready", "/metrics", "/store/items", "/store/items/search", "/store/namespaces"}
)
"""Route labels of the request metrics; any other path counts as "other"."""


class ApiMetrics:
    """Requests by route, method and status; latency by route."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "memory_api_requests", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=registry,
        )
        self.latency = Histogram(
            "memory_api_request_duration_seconds", "Time to answer an HTTP request, by route template.",
            ["route"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.ready_checks = Counter(
            "memory_ready_checks", "Database checks made for /ready (bursts share one check).", registry=registry,
        )

        self.registry = registry
        self._series: dict[tuple[str, str, int], tuple[Callable[[], None], Callable[[float], None]]] = {}

    def watch_key_cache(self, cache: Any) -> None:
        """Report `cache` (a `KeyCache`; None when off) at scrape time."""
        if cache is not None:
            self.registry.register(KeyCacheCollector(cache))

    def observe(self, path: str, method: str, status: int, seconds: float) -> None:
        """Count and time a request to `path` (labelled by route template; any other is "other")."""
        series = self._series.get((path, method, status))
        if series is None:  # the labelled children, looked up once per (path, method, status)
            route = path if path in ROUTES else "other"
            series = (self.requests.labels(route, method, str(status)).inc, self.latency.labels(route).observe)
            if route != "other":
                self._series[(path, method, status)] = series
        count, timed = series
        count()
        timed(seconds)


class KeyCacheCollector(Collector):
    """Whether the API key cache is in use, and how many requests it answered."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def collect(self) -> Iterable[Metric]:
        live = GaugeMetricFamily(
            "memory_api_key_cache_live",
            "1 while the API key cache hears revocations (keys served from memory); 0: every request asks the database.",
        )
        live.add_metric([], 1.0 if self.cache.live else 0.0)
        yield live
        hits = CounterMetricFamily("memory_api_key_cache_hits", "Requests whose API key was served from the key cache.")
        hits.add_metric([], float(self.cache.hits))
        yield hits
        listens = CounterMetricFamily(
            "memory_api_key_cache_listens", "Times the key cache's listener came up (at start and after each loss)."
        )
        listens.add_metric([], float(self.cache.listens))
        yield listens


QUOTA_LIMITS = ("max_tenant_bytes", "max_tenant_files")


class QuotaCollector(Collector):
    """Tenants over 90% of a tenant-wide quota, counted by limit; one series per such tenant only
    with `[serve] tenant_labels = true`. `near` returns `(tenant, limit)` pairs, None without quotas."""

    def __init__(self, near: Callable[[], list[tuple[str, str]] | None], *, tenant_labels: bool = False) -> None:
        self.near = near
        self.tenant_labels = tenant_labels

    def collect(self) -> Iterable[Metric]:
        near = self.near()
        if near is None:
            return
        counted = GaugeMetricFamily(
            "memory_quota_tenants_near_limit", "Tenants using more than 90% of a tenant-wide quota, by limit.",
            labels=["limit"],
        )
        for limit in QUOTA_LIMITS:
            counted.add_metric([limit], float(sum(1 for _, name in near if name == limit)))
        yield counted
        if self.tenant_labels:
            named = GaugeMetricFamily(
                "memory_quota_tenant_near_limit", "1 for each tenant using more than 90% of the limit.",
                labels=["tenant", "limit"],
            )
            for tenant, limit in near:
                named.add_metric([tenant, limit], 1.0)
            yield named
