"""Chunk counts per collection: a document's chunk count in each index that holds its active version.

A re-index rebuilds every document with other chunking, so after its switch the count a document had at its
write (``documents.chunk_count``) describes the old collection. GET /v1/documents reports the count in the
collection search serves: this table's row for that collection and the active version, else (rows written
before this table, or in the collection that was current at the write) ``documents.chunk_count``.

Revision ID: 0007_chunk_counts
Revises: 0006_job_lease
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_chunk_counts"
down_revision = "0006_job_lease"
branch_labels = None
depends_on = None
# The oldest release schema head that may run on this schema (0011_schema_compat):
# expand-only: the release before never reads the table; a document it rewrites has no row for the
# new version, and reads fall back to documents.chunk_count for it (the rule the table was introduced with).
compatible_from = "0006_job_lease"


def upgrade() -> None:
    op.create_table(
        "chunk_counts",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("document_id", sa.String(256), nullable=False),
        sa.Column("collection", sa.String(255), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("chunk_count", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "document_id", "collection", name="pk_chunk_counts"),
    )
    op.create_index("ix_chunk_counts_collection", "chunk_counts", ["collection"])


def downgrade() -> None:
    op.drop_index("ix_chunk_counts_collection", table_name="chunk_counts")
    op.drop_table("chunk_counts")
