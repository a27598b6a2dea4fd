"""api keys: memory_api_keys for the Store API (`memory keys create|list|revoke`)

Revision ID: 303a28d3f4f8
Revises: 7c3e9a41d2b6
Create Date: 2026-11-21

A key is stored as the sha256 of its secret (a 256-bit random token, so a fast hash is enough),
with the tenant it reaches (every tenant when `admin`), its creation, last use and revocation.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "303a28d3f4f8"
down_revision: str | Sequence[str] | None = "7c3e9a41d2b6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "memory_api_keys",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("admin", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memory_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_memory_api_keys_key_hash")),
        comment="Store API keys (`memory keys`): sha256 of the secret, the tenant it reaches (all with admin).",
    )


def downgrade() -> None:
    op.drop_table("memory_api_keys")
