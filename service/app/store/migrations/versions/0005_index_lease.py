"""The re-index lease: which replica is building the next index, until when (renewed by the builder).

Revision ID: 0005_index_lease
Revises: 0004_index_pointer
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_index_lease"
down_revision = "0004_index_pointer"
branch_labels = None
depends_on = None
# The oldest release schema head that may run on this schema (0011_schema_compat):
# not backward compatible: the release before builds a re-index without the lease, so two replicas
# of a mixed fleet (a rolling update) can build at once.
compatible_from = "0005_index_lease"


def upgrade() -> None:
    op.create_table(
        "index_lease",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("collection", sa.String(255), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_index_lease"),
    )


def downgrade() -> None:
    op.drop_table("index_lease")
