"""initial schema: LangGraph's tables, memory_job_runs, memory_tenant_erasures, checkpoint indexes

Revision ID: 34fbde1743aa
Revises:
Create Date: 2026-11-21

Order matters for re-runs after a failure: the steps that cannot run in a transaction come first
and are idempotent (LangGraph's versioned setup(), CREATE INDEX CONCURRENTLY IF NOT EXISTS); our
tables are then created in the same transaction that stamps the revision.

Indexes on `checkpoints` for the retention jobs, measured on 200k checkpoint rows (10k threads x
20 checkpoints, 172 MB; PG 15 and PG 18 alike, warm cache, best of 3 EXPLAIN ANALYZE):
- "threads whose newest checkpoint ts is older than X" written as old rows anti-joined with newer
  rows of the same thread: 97 -> 41 ms (PG 15), 74 -> 34 ms (PG 18) with ((checkpoint->>'ts')) in
  the steady state (about 3% of threads idle); 846 -> 190 ms with a 180-day backlog. The
  GROUP BY thread_id HAVING max(ts) < X form is a full scan (~75 ms, every page) with or without it.
  An index on (thread_id, (checkpoint->>'ts')) gained nothing over ts alone: not created.
- per-tenant work (`metadata->>'assistant_id' = T`: tenant delete, per-tenant pruning): listing a
  tenant's threads 37-80 ms -> 1.7-2.4 ms with ((metadata->>'assistant_id')) (1.4 MB).
- cost: inserting 200k rows 1.96 s -> 2.42 s (+ts) -> 2.68 s (+both); ts index 11 MB.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from memory import migrations, sql

revision: str = "34fbde1743aa"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKPOINT_INDEXES = {
    "memory_checkpoints_ts_idx": "CREATE INDEX CONCURRENTLY IF NOT EXISTS memory_checkpoints_ts_idx "
    "ON checkpoints ((checkpoint->>'ts'))",
    "memory_checkpoints_assistant_id_idx": "CREATE INDEX CONCURRENTLY IF NOT EXISTS memory_checkpoints_assistant_id_idx "
    "ON checkpoints ((metadata->>'assistant_id'))",
}


def upgrade() -> None:
    migrations.setup_langgraph_in_migration(op)
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        for name, create in CHECKPOINT_INDEXES.items():
            if bind.exec_driver_sql(sql.INVALID_INDEX, {"name": name}).first() is not None:
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")  # left by an interrupted build
            op.execute(create)

    op.create_table(
        "memory_job_runs",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.Text(), server_default=sa.text("'running'"), nullable=False),
        sa.Column("dry_run", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("host", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("counts", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("tenant_counts", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('running', 'succeeded', 'failed')", name=op.f("ck_memory_job_runs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memory_job_runs")),
        comment="One row per retention/backup job run: totals, per-tenant counts, outcome.",
    )
    op.create_index(
        "ix_memory_job_runs_job_started_at",
        "memory_job_runs",
        ["job", sa.literal_column("started_at DESC")],
    )
    op.create_table(
        "memory_tenant_erasures",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("counts", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memory_tenant_erasures")),
        comment="Ledger of tenant erasures (`memory tenant delete`): who, when, how much.",
    )
    op.create_index(
        "ix_memory_tenant_erasures_tenant",
        "memory_tenant_erasures",
        ["tenant", sa.literal_column("erased_at DESC")],
    )


def downgrade() -> None:
    """Our tables and indexes only: LangGraph's tables hold the agents' data and stay.

    Refused while the erasure ledger holds receipts: dropping it would let erased tenants come back."""
    from memory import erasure

    erasure.guard_downgrade(op.get_bind(), revision)
    with op.get_context().autocommit_block():
        for name in CHECKPOINT_INDEXES:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    op.drop_index("ix_memory_tenant_erasures_tenant", table_name="memory_tenant_erasures")
    op.drop_table("memory_tenant_erasures")
    op.drop_index("ix_memory_job_runs_job_started_at", table_name="memory_job_runs")
    op.drop_table("memory_job_runs")
