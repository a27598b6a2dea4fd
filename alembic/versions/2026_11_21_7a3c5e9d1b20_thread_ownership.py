"""thread ownership: memory_threads, backfilled from checkpoint metadata, and the claim/check functions

Revision ID: 7a3c5e9d1b20
Revises: 34fbde1743aa
Create Date: 2026-11-21

Every checkpoint thread has one row in `memory_threads` naming its owning tenant. Existing threads
are attributed from their checkpoints' `metadata->>'assistant_id'`: a thread every checkpoint of
which names the same valid tenant goes to that tenant; any other thread (no tenant, several, an
invalid id, or rows in blobs/writes only) gets `tenant = NULL`: unattributed, refused to every
tenant until `memory threads assign THREAD TENANT`. Nothing is deleted.

`memory_claim_thread` / `memory_check_thread` are what the tenant-aware saver queues in front of
its own statements (same pipeline or transaction): the claim owns a new thread for the writing
tenant, and both raise SQLSTATE MT001 for a thread another tenant owns, or one whose rows have no
owner row. (Foreign keys from the checkpoint tables were measured and left out: their per-row
parent lock cost agent turns 12-25%; the functions give the same refusals at one statement a call.)
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from memory import sql

revision: str = "7a3c5e9d1b20"
down_revision: str | Sequence[str] | None = "34fbde1743aa"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

def upgrade() -> None:
    op.create_table(
        "memory_threads",
        sa.Column("thread_id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("thread_id", name=op.f("pk_memory_threads")),
        comment="The owning tenant of each checkpoint thread (NULL: unattributed, admin only).",
    )
    op.create_index("ix_memory_threads_tenant", "memory_threads", ["tenant"])
    op.execute(sql.OWNERSHIP_BACKFILL)
    op.execute(sql.OWNERSHIP_CLAIM_FUNCTION)
    op.execute(sql.OWNERSHIP_CHECK_FUNCTION)


def downgrade() -> None:
    for drop in sql.OWNERSHIP_DROP_FUNCTIONS:
        op.execute(drop)
    op.drop_index("ix_memory_threads_tenant", table_name="memory_threads")
    op.drop_table("memory_threads")
