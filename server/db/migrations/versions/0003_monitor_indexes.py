"""indexes for the pilot monitor: a VO's pilots by site and status, ended pilots by time

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("idx_vo_site_status", "PilotAgents", ["VO", "GridSite", "Status"])
    op.create_index("idx_status_update", "PilotAgents", ["Status", "LastUpdateTime"])


def downgrade() -> None:
    op.drop_index("idx_status_update", table_name="PilotAgents")
    op.drop_index("idx_vo_site_status", table_name="PilotAgents")
