"""tenant quotas: usage and limits tables, quota triggers on store, TTL-refresh index

Revision ID: 7c3e9a41d2b6
Revises: 7a3c5e9d1b20
Create Date: 2026-11-21

`memory_tenant_usage` is filled from the existing rows under a SHARE lock on `store` (writers
wait for the migration's transaction), in the transaction that creates the triggers, so the counts
start exact. The partial index serves the listing's TTL refresh (memory/pushdown.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from memory import sql

revision: str = "7c3e9a41d2b6"
down_revision: str | Sequence[str] | None = "7a3c5e9d1b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TTL_PREFIX_INDEX = "memory_store_ttl_prefix_idx"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        if bind.exec_driver_sql(sql.INVALID_INDEX, {"name": TTL_PREFIX_INDEX}).first() is not None:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {TTL_PREFIX_INDEX}")
        op.execute(sql.QUOTA_TTL_PREFIX_INDEX)

    op.create_table(
        "memory_quota_limits",
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("max_file_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_tenant_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_tenant_files", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("tenant", name=op.f("pk_memory_quota_limits")),
        comment="Per-tenant quotas from [quota] ('*' = every other tenant; 0 = unlimited), enforced by triggers on store.",
    )
    op.create_table(
        "memory_tenant_usage",
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("files", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("tenant", name=op.f("pk_memory_tenant_usage")),
        comment="Store items and bytes per tenant, kept by the quota triggers on store in the writing statement.",
    )
    driver = op.get_bind().connection.driver_connection  # plpgsql bodies hold '%': no bind-parameter parsing
    for statement in (
        *sql.QUOTA_FUNCTIONS,
        sql.QUOTA_LOCK_STORE,
        *sql.QUOTA_CREATE_TRIGGERS,
        sql.QUOTA_RECOUNT,
    ):
        driver.execute(statement)


def downgrade() -> None:
    for statement in sql.QUOTA_DROP:
        op.execute(statement)
    op.drop_table("memory_tenant_usage")
    op.drop_table("memory_quota_limits")
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {TTL_PREFIX_INDEX}")
