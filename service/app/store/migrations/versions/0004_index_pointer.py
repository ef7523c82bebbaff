"""The index pointer: which collection (and model/chunking) search serves from, switched atomically by a re-index.

Revision ID: 0004_index_pointer
Revises: 0003_document_sources
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_index_pointer"
down_revision = "0003_document_sources"
branch_labels = None
depends_on = None
# The oldest release schema head that may run on this schema (0011_schema_compat):
# not backward compatible: the release before ignores the pointer and writes to and serves from its
# configured collection while the pointer may name another one.
compatible_from = "0004_index_pointer"


def upgrade() -> None:
    op.create_table(
        "index_pointer",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("collection", sa.String(255), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("previous_collection", sa.String(255), nullable=True),
        sa.Column("previous_config", sa.JSON, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_index_pointer"),
    )


def downgrade() -> None:
    op.drop_table("index_pointer")
