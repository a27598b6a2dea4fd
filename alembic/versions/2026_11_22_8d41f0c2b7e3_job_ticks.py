"""job ticks: each scheduled tick of each job claimed once across replicas

Revision ID: 8d41f0c2b7e3
Revises: 5b7e2c9d4a10
Create Date: 2026-11-22

A replica about to run a scheduled tick inserts `(job, tick)` ON CONFLICT DO NOTHING: the one
whose row went in runs it. The row is removed again when that run fails, so another replica may
retry the tick; a tick whose claimant died stays claimed (the next tick runs as usual).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8d41f0c2b7e3"
down_revision: str | Sequence[str] | None = "5b7e2c9d4a10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "memory_job_ticks",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("tick", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("job", "tick", name=op.f("pk_memory_job_ticks")),
        comment="Scheduled ticks claimed by a replica: each (job, tick) runs once across replicas.",
    )


def downgrade() -> None:
    op.drop_table("memory_job_ticks")
