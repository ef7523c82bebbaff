"""Write order pruning: a mark (``prune_mark``: the ``issued`` seen, ``marked_at``) for rows that no longer matter.

A row matters while a job may still commit or be `Superseded` against it. The registry's pruner
(``DocumentRegistry.prune_write_order``) marks a row when nothing is outstanding (``issued <= committed``, no
queued or running job of the document) and deletes it on a later pass, at least the grace period after, only if
``issued`` is still the marked value (no ticket, write or delete since: every one of them increments it, also
when an older release makes it) and still no job is live. Existing rows start unmarked.

Revision ID: 0010_write_order_prune
Revises: 0009_index_pointer_choice
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_write_order_prune"
down_revision = "0009_index_pointer_choice"
branch_labels = None
depends_on = None
# The oldest release schema head that may run on this schema (0011_schema_compat):
# expand-only: the release before never prunes, and increments ``issued`` on every ticket, write and
# delete, which is what the pruner checks before it deletes a marked row.
compatible_from = "0008_write_order"


def upgrade() -> None:
    with op.batch_alter_table("write_order") as batch:
        batch.add_column(sa.Column("prune_mark", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("marked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("write_order") as batch:
        batch.drop_column("marked_at")
        batch.drop_column("prune_mark")
