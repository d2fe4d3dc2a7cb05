"""learning from empty pilots: each reported queue's recent Done pilots, their empty share and
the director's submission factor

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("DirectorQueues", schema=None) as batch_op:
        batch_op.add_column(sa.Column("EndedPilots", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("EmptyRatio", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("SubmissionFactor", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("DirectorQueues", schema=None) as batch_op:
        batch_op.drop_column("SubmissionFactor")
        batch_op.drop_column("EmptyRatio")
        batch_op.drop_column("EndedPilots")
