"""Write order: a per-document ticket sequence that orders writes by acceptance, not by completion.

An async PUT takes a ticket with its 202; its job commits only if no write or delete with a newer ticket took
effect meanwhile (else it ends ``superseded``). Synchronous writes and deletes take and commit the next ticket in
their own transaction. A deleted document keeps its row: the tombstone an older queued job loses to. Existing
documents get no row; the first write or accepted async write creates it.

Revision ID: 0008_write_order
Revises: 0007_chunk_counts
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_write_order"
down_revision = "0007_chunk_counts"
branch_labels = None
depends_on = None
# The oldest release schema head that may run on this schema (0011_schema_compat):
# not backward compatible: the release before takes no tickets, so a job queued before the rollback
# could later commit over a newer synchronous write made by it (the ordering this migration introduced).
compatible_from = "0008_write_order"


def upgrade() -> None:
    op.create_table(
        "write_order",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("document_id", sa.String(256), nullable=False),
        sa.Column("issued", sa.BigInteger, nullable=False),
        sa.Column("committed", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "document_id", name="pk_write_order"),
    )


def downgrade() -> None:
    op.drop_table("write_order")
