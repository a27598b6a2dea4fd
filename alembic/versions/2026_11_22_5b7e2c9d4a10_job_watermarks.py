"""job watermarks: where an incremental job run left off (checkpoint pruning's high-water mark)

Revision ID: 5b7e2c9d4a10
Revises: 303a28d3f4f8
Create Date: 2026-11-22

One row per job: `mark` is how far the job has looked (for prune_checkpoints: a checkpoint `ts`,
compared as text like LangGraph writes it), `full_pass_at` when it last made a full pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b7e2c9d4a10"
down_revision: str | Sequence[str] | None = "303a28d3f4f8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "memory_job_watermarks",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("mark", sa.Text(), nullable=False),
        sa.Column("full_pass_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_memory_job_watermarks")),
        comment="Where each incremental job left off: its high-water mark and its last full pass.",
    )


def downgrade() -> None:
    op.drop_table("memory_job_watermarks")
