"""`JobReport`: what one job run did (or, dry, would do), as recorded in `memory_job_runs`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"


@dataclass
class JobReport:
    """One run of one job.

    `counts` holds totals (`items`, `vectors`, `batches`, ...), `tenant_counts` the same per
    tenant (`{"acme": {"items": 3, "vectors": 3}}`). In a dry run they are what a real run
    would delete now. `longest_transaction_s` is the longest single batch transaction.
    """

    job: str
    dry_run: bool
    started_at: datetime
    host: str = ""
    run_id: int | None = None
    status: str = RUNNING
    finished_at: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    tenant_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    error: str | None = None
    longest_transaction_s: float = 0.0

    def add(self, tenant: str, name: str, amount: int = 1) -> None:
        """Count `amount` of `name` (e.g. "items") for `tenant` and in the totals."""
        if not amount:
            return
        self.counts[name] = self.counts.get(name, 0) + amount
        per_tenant = self.tenant_counts.setdefault(tenant, {})
        per_tenant[name] = per_tenant.get(name, 0) + amount

    def bump(self, name: str, amount: int = 1) -> None:
        """Count in the totals only (e.g. "batches")."""
        self.counts[name] = self.counts.get(name, 0) + amount

    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def deleted(self) -> int:
        """Items deleted (or, dry, that would be)."""
        return self.counts.get("items", 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "job": self.job,
            "status": self.status,
            "dry_run": self.dry_run,
            "host": self.host,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_s": self.duration_s,
            "longest_transaction_s": self.longest_transaction_s,
            "counts": dict(self.counts),
            "tenant_counts": {tenant: dict(counts) for tenant, counts in sorted(self.tenant_counts.items())},
            "error": self.error,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobReport:
        """A report from a `memory_job_runs` row (history)."""
        return cls(
            job=row["job"],
            dry_run=row["dry_run"],
            started_at=row["started_at"],
            host=row["host"],
            run_id=row["id"],
            status=row["status"],
            finished_at=row["finished_at"],
            counts=dict(row["counts"] or {}),
            tenant_counts=dict(row["tenant_counts"] or {}),
            error=row["error"],
        )
