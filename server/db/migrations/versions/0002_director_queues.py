"""director queues: what each director last reported of its queues

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _utc_datetime() -> sa.types.TypeEngine[datetime]:
    return (
        sa.DateTime()
        .with_variant(mysql.DATETIME(fsp=6), "mariadb")
        .with_variant(mysql.DATETIME(fsp=6), "mysql")
    )


def upgrade() -> None:
    op.create_table(
        "DirectorQueues",
        sa.Column("Director", sa.String(length=255), nullable=False),
        sa.Column("VO", sa.String(length=128), nullable=False),
        sa.Column("QueueKey", sa.String(length=384), nullable=False),
        sa.Column("Site", sa.String(length=128), nullable=False),
        sa.Column("CE", sa.String(length=128), nullable=False),
        sa.Column("Queue", sa.String(length=128), nullable=False),
        sa.Column("CEKind", sa.String(length=32), nullable=False),
        sa.Column("MaxTotalPilots", sa.Integer(), nullable=False),
        sa.Column("MaxWaitingPilots", sa.Integer(), nullable=False),
        sa.Column("PilotsPerCycle", sa.Integer(), nullable=False),
        sa.Column("Enabled", sa.Boolean(), nullable=False),
        sa.Column("Failures", sa.Integer(), nullable=False),
        sa.Column("BackoffUntil", _utc_datetime(), nullable=True),
        sa.Column("LastError", sa.String(length=255), nullable=True),
        sa.Column("LastCycleAt", _utc_datetime(), nullable=True),
        sa.Column("LastSubmitted", sa.Integer(), nullable=True),
        sa.Column("LastWaiting", sa.Integer(), nullable=True),
        sa.Column("LastRunning", sa.Integer(), nullable=True),
        sa.Column("ReportedAt", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("Director", "VO", "QueueKey"),
    )
    with op.batch_alter_table("DirectorQueues", schema=None) as batch_op:
        batch_op.create_index("idx_director_queues_vo", ["VO", "Site", "CE", "Queue"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("DirectorQueues", schema=None) as batch_op:
        batch_op.drop_index("idx_director_queues_vo")
    op.drop_table("DirectorQueues")
