"""store tenant-recent index: a tenant's search pages its items newest first without a sort

Revision ID: e4a7c1b9d352
Revises: 8d41f0c2b7e3
Create Date: 2026-11-22

`memory_store_tenant_recent_idx` on `(split_part(prefix, '.', 1), updated_at DESC)` serves the
search of a one-label namespace prefix, as `memory.pgstore` sends it (STORE_SEARCH_TENANT): a page
of 10 reads 10 index entries instead of every item of the tenant. Built CONCURRENTLY (writers go
on); an index left invalid by an interrupted build is dropped and built again.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from memory import sql

revision: str = "e4a7c1b9d352"
down_revision: str | Sequence[str] | None = "8d41f0c2b7e3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_RECENT_INDEX = "memory_store_tenant_recent_idx"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        if op.get_bind().exec_driver_sql(sql.INVALID_INDEX, {"name": TENANT_RECENT_INDEX}).first() is not None:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {TENANT_RECENT_INDEX}")
        op.execute(sql.STORE_TENANT_RECENT_INDEX)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {TENANT_RECENT_INDEX}")
