"""site bans: sites, CEs and queues banned for a VO, with who, when, why and until when

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
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
        "SiteBans",
        sa.Column(
            "BanID",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("VO", sa.String(length=128), nullable=False),
        sa.Column("Site", sa.String(length=128), nullable=False),
        sa.Column("CE", sa.String(length=128), nullable=True),
        sa.Column("Queue", sa.String(length=128), nullable=True),
        sa.Column("Reason", sa.String(length=255), nullable=False),
        sa.Column("BannedBy", sa.String(length=255), nullable=False),
        sa.Column("BannedAt", _utc_datetime(), nullable=False),
        sa.Column("Until", _utc_datetime(), nullable=True),
        sa.Column("AllowedBy", sa.String(length=255), nullable=True),
        sa.Column("AllowedAt", _utc_datetime(), nullable=True),
        sa.Column("ActiveKey", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("BanID"),
    )
    op.create_index("idx_bans_active_key", "SiteBans", ["ActiveKey"], unique=True)
    op.create_index("idx_bans_vo_site", "SiteBans", ["VO", "Site"])


def downgrade() -> None:
    op.drop_index("idx_bans_vo_site", table_name="SiteBans")
    op.drop_index("idx_bans_active_key", table_name="SiteBans")
    op.drop_table("SiteBans")
