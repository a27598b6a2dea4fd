"""thread ownership: memory_threads, backfilled from checkpoint metadata, referenced by LangGraph's tables

Revision ID: 7a3c5e9d1b20
Revises: 34fbde1743aa
Create Date: 2026-11-21

Every checkpoint thread has one row in `memory_threads` naming its owning tenant. Existing threads
are attributed from their checkpoints' `metadata->>'assistant_id'`: a thread every checkpoint of
which names the same valid tenant goes to that tenant; any other thread (no tenant, several, an
invalid id, or rows in blobs/writes only) gets `tenant = NULL`: unattributed, refused to every
tenant until `memory threads assign THREAD TENANT`. Nothing is deleted.

The three checkpoint tables then reference `memory_threads (thread_id) ON DELETE CASCADE`: no
checkpoint, blob or write can exist for a thread without an owner row, whatever path writes it
(the saver, an import, a restore), and deleting the owner row removes the whole thread.
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

CHECKPOINT_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


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
    for table in CHECKPOINT_TABLES:
        op.create_foreign_key(
            f"fk_{table}_thread_id_memory_threads", table, "memory_threads", ["thread_id"], ["thread_id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    for table in CHECKPOINT_TABLES:
        op.drop_constraint(f"fk_{table}_thread_id_memory_threads", table, type_="foreignkey")
    op.drop_index("ix_memory_threads_tenant", table_name="memory_threads")
    op.drop_table("memory_threads")
