"""The service's own tables, declared once: alembic's autogenerate compares the database against this.

LangGraph's tables (`store`, `checkpoints`, ...) are not declared here: their `setup()` owns them,
and the migration calls it (see `memory.migrations.setup_langgraph`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
"""Unqualified tables: they land in the configured schema through the connection's search_path."""

JOB_STATUSES = ("running", "succeeded", "failed")

job_runs = Table(
    "memory_job_runs",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("job", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("status", Text, nullable=False, server_default=text("'running'")),
    Column("dry_run", Boolean, nullable=False, server_default=text("false")),
    Column("host", Text, nullable=False, server_default=text("''")),
    Column("counts", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("tenant_counts", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("error", Text, nullable=True),
    CheckConstraint("status IN ('running', 'succeeded', 'failed')", name="status"),
    comment="One row per retention/backup job run: totals, per-tenant counts, outcome.",
)
Index("ix_memory_job_runs_job_started_at", job_runs.c.job, job_runs.c.started_at.desc())

tenant_erasures = Table(
    "memory_tenant_erasures",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("tenant", Text, nullable=False),
    Column("erased_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("counts", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    comment="Ledger of tenant erasures (`memory tenant delete`): who, when, how much.",
)
Index("ix_memory_tenant_erasures_tenant", tenant_erasures.c.tenant, tenant_erasures.c.erased_at.desc())

threads = Table(
    "memory_threads",
    metadata,
    Column("thread_id", Text, primary_key=True),
    Column("tenant", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    comment="The owning tenant of each checkpoint thread (NULL: unattributed, admin only).",
)
Index("ix_memory_threads_tenant", threads.c.tenant)

quota_limits = Table(
    "memory_quota_limits",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("max_file_bytes", BigInteger, nullable=False, server_default=text("0")),
    Column("max_tenant_bytes", BigInteger, nullable=False, server_default=text("0")),
    Column("max_tenant_files", BigInteger, nullable=False, server_default=text("0")),
    comment="Per-tenant quotas from [quota] ('*' = every other tenant; 0 = unlimited), enforced by triggers on store.",
)

tenant_usage = Table(
    "memory_tenant_usage",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("files", BigInteger, nullable=False, server_default=text("0")),
    Column("bytes", BigInteger, nullable=False, server_default=text("0")),
    comment="Store items and bytes per tenant, kept by the quota triggers on store in the writing statement.",
)

api_keys = Table(
    "memory_api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("name", Text, nullable=False, server_default=text("''")),
    Column("admin", Boolean, nullable=False, server_default=text("false")),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    comment="Store API keys (`memory keys`): sha256 of the secret, the tenant it reaches (all with admin).",
)

job_ticks = Table(
    "memory_job_ticks",
    metadata,
    Column("job", Text, primary_key=True),
    Column("tick", DateTime(timezone=True), primary_key=True),
    Column("host", Text, nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    comment="Scheduled ticks claimed by a replica: each (job, tick) runs once across replicas.",
)

job_watermarks = Table(
    "memory_job_watermarks",
    metadata,
    Column("job", Text, primary_key=True),
    Column("mark", Text, nullable=False),
    Column("full_pass_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    comment="Where each incremental job left off: its high-water mark and its last full pass.",
)
