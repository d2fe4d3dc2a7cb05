"""pilot counts per VO, site, CE, queue and status, kept by triggers (SQLite only)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

The summary reads them instead of scanning every pilot (`server/db/pilot_counts.py`, which says
why PostgreSQL and MariaDB keep the scan). The table is filled from the pilots there are, in the
migration's transaction, before the triggers that keep it exist: nothing else writes meanwhile.
"""

from __future__ import annotations

from alembic import op

from server.db import pilot_counts

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        pilot_counts.create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        pilot_counts.drop(bind)
