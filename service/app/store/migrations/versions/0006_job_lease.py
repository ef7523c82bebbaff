"""Job leases with a fencing token: each claim of a job gets a new ``lease_token`` (and records its holder), so a
worker whose lease was taken over can neither renew it nor commit or finish the job.

Revision ID: 0006_job_lease
Revises: 0005_index_lease
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_job_lease"
down_revision = "0005_index_lease"
branch_labels = None
depends_on = None
# The oldest release schema head that may run on this schema (0011_schema_compat):
# not backward compatible: the release before claims jobs without a new fencing token, so a worker
# whose lease it took over can still commit (the race this migration closed) in a mixed fleet.
compatible_from = "0006_job_lease"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_token", sa.String(32), nullable=True))
        batch.add_column(sa.Column("lease_holder", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_holder")
        batch.drop_column("lease_token")
