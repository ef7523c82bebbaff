"""Keep the source text of each active document version (document_sources), so documents can be re-indexed.

Revision ID: 0003_document_sources
Revises: 0002_jobs
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_document_sources"
down_revision = "0002_jobs"
branch_labels = None
depends_on = None
# The oldest release schema head that may run on this schema (0011_schema_compat):
# not backward compatible: the release before writes and deletes documents without their kept
# text, so a later re-index would find text of replaced versions, or none.
compatible_from = "0003_document_sources"


def upgrade() -> None:
    op.create_table(
        "document_sources",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("document_id", sa.String(256), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "document_id", name="pk_document_sources"),
    )


def downgrade() -> None:
    op.drop_table("document_sources")
