"""The schema compatibility record: per applied revision, the oldest service schema head that may run on it.

Every migration declares ``compatible_from``: the oldest release schema head (a revision id) whose code may run
on the schema the migration produces. An expand-only migration (a new table or nullable column the older code
never reads, and whose absence from the older code's writes breaks nothing) keeps its predecessor's value; one
the older code would misuse (it ignores a table the newer code relies on to stay correct, or it cannot write a
column the newer code requires) names itself. ``migrations/env.py`` writes the row of each revision it applies
here, in the migration's transaction. A release that meets a database AHEAD of its own head (a rollback) reads
the row of the database's revision and starts when its own head is at or after ``compatible_from`` (logging it),
else refuses naming both revisions (``registry.SchemaAheadError``); ``ragops rollback`` refuses the same case
before it changes anything, from the images' ``io.rag.schema-head`` / ``io.rag.schema-compatible-from`` labels.

Releases before this revision do not have that code: whatever the record says, they refuse any revision they do
not ship, so this revision's own ``compatible_from`` is itself (no earlier release can run on it). The rows of
0001-0010 are the classification of the migrations shipped before the contract (each file says why).

Revision ID: 0011_schema_compat
Revises: 0010_write_order_prune
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_schema_compat"
down_revision = "0010_write_order_prune"
branch_labels = None
depends_on = None
compatible_from = "0011_schema_compat"

# What each migration before the contract declares (``compatible_from`` in its file).
EARLIER: dict[str, str] = {
    "0001": "0001",
    "0002_jobs": "0002_jobs",
    "0003_document_sources": "0003_document_sources",
    "0004_index_pointer": "0004_index_pointer",
    "0005_index_lease": "0005_index_lease",
    "0006_job_lease": "0006_job_lease",
    "0007_chunk_counts": "0006_job_lease",
    "0008_write_order": "0008_write_order",
    "0009_index_pointer_choice": "0008_write_order",
    "0010_write_order_prune": "0008_write_order",
}


def upgrade() -> None:
    table = op.create_table(
        "schema_compat",
        sa.Column("revision", sa.String(64), nullable=False),
        sa.Column("compatible_from", sa.String(64), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("revision", name="pk_schema_compat"),
    )
    # Applied before this table existed: recorded without a time. This revision's own row is written by env.py.
    op.bulk_insert(
        table, [{"revision": r, "compatible_from": c, "applied_at": None} for r, c in EARLIER.items()]
    )


def downgrade() -> None:
    op.drop_table("schema_compat")
