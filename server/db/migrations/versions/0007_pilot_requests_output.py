"""kills and pilot outputs: operators' requests about one pilot (kill, fetch its output),
carried out by its director, and the pilots' CE output (DiracX's PilotOutput, plus the CE log)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _utc_datetime() -> sa.types.TypeEngine[datetime]:
    return (
        sa.DateTime()
        .with_variant(mysql.DATETIME(fsp=6), "mariadb")
        .with_variant(mysql.DATETIME(fsp=6), "mysql")
    )


def _output_text() -> sa.types.TypeEngine[str]:
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def _big_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "PilotRequests",
        sa.Column("RequestID", _big_id(), autoincrement=True, nullable=False),
        sa.Column("Kind", sa.String(length=16), nullable=False),
        sa.Column("PilotID", sa.BigInteger(), nullable=False),
        sa.Column("PilotStamp", sa.String(length=32), nullable=False),
        sa.Column("VO", sa.String(length=128), nullable=False),
        sa.Column("Reason", sa.String(length=255), nullable=True),
        sa.Column("RequestedBy", sa.String(length=255), nullable=False),
        sa.Column("RequestedAt", _utc_datetime(), nullable=False),
        sa.Column("State", sa.String(length=16), nullable=False),
        sa.Column("Attempts", sa.Integer(), nullable=False),
        sa.Column("LastError", sa.String(length=255), nullable=True),
        sa.Column("NextAttemptAt", _utc_datetime(), nullable=True),
        sa.Column("UpdatedAt", _utc_datetime(), nullable=False),
        sa.Column("OpenKey", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("RequestID"),
    )
    op.create_index("idx_requests_open_key", "PilotRequests", ["OpenKey"], unique=True)
    op.create_index("idx_requests_kind_state", "PilotRequests", ["Kind", "State", "NextAttemptAt"])
    op.create_index("idx_requests_pilot", "PilotRequests", ["PilotID"])
    op.create_table(
        "PilotOutput",
        sa.Column("PilotID", _big_id(), autoincrement=False, nullable=False),
        sa.Column("StdOutput", _output_text(), nullable=True),
        sa.Column("StdError", _output_text(), nullable=True),
        sa.Column("CELog", _output_text(), nullable=True),
        sa.Column("NotAvailable", sa.String(length=255), nullable=True),
        sa.Column("Truncated", sa.Boolean(), nullable=False),
        sa.Column("UploadedBy", sa.String(length=255), nullable=False),
        sa.Column("UploadedAt", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("PilotID"),
    )


def downgrade() -> None:
    op.drop_table("PilotOutput")
    op.drop_index("idx_requests_pilot", table_name="PilotRequests")
    op.drop_index("idx_requests_kind_state", table_name="PilotRequests")
    op.drop_index("idx_requests_open_key", table_name="PilotRequests")
    op.drop_table("PilotRequests")
