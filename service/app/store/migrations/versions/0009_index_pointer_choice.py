"""Who chose the served index: the deployed settings, or an operator (a rollback, a manual re-index).

``chosen_by`` is ``config`` (a start-up re-index towards the settings, a first start) or ``rollback`` / ``manual``
(an operator, through the admin API, chose an index that differs from the deployed settings);
``pinned_settings`` is then the deployed settings (model, chunking) at that moment. A start-up re-indexes
towards its settings only when they differ from those (the stack's configuration changed since), so a rollback
is not undone by the next pod start (service.app.jobs.reindex.startup_decision). Existing pointers get
``config``: the behaviour they had before (the registry never recorded an operator's choice).

Revision ID: 0009_index_pointer_choice
Revises: 0008_write_order
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_index_pointer_choice"
down_revision = "0008_write_order"
branch_labels = None
depends_on = None
# The oldest release schema head that may run on this schema (0011_schema_compat):
# expand-only: the new columns have server defaults; the release before re-indexes towards its
# settings at start-up as it always did (it does not honour an operator's choice, which is its own behaviour).
compatible_from = "0008_write_order"


def upgrade() -> None:
    with op.batch_alter_table("index_pointer") as batch:
        batch.add_column(sa.Column("chosen_by", sa.String(16), nullable=False, server_default="config"))
        batch.add_column(sa.Column("pinned_settings", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("index_pointer") as batch:
        batch.drop_column("pinned_settings")
        batch.drop_column("chosen_by")
