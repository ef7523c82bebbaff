"""Initial registry schema: documents (active version per tenant/document) and tenants (data_version).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
# The oldest release schema head that may run on this schema (0011_schema_compat):
# the first schema: nothing older exists.
compatible_from = "0001"


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("document_id", sa.String(256), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("content_type", sa.String(128), nullable=False),
        sa.Column("chunk_count", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "document_id", name="pk_documents"),
    )
    op.create_table(
        "tenants",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("data_version", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenants"),
    )


def downgrade() -> None:
    op.drop_table("tenants")
    op.drop_table("documents")
