"""which secret registered a vacuum pilot, and which secret a token family was exchanged for

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "PilotSecretRegistrations",
        sa.Column("PilotStamp", sa.String(length=32), nullable=False),
        sa.Column("SecretID", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(["SecretID"], ["PilotSecrets.SecretID"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("PilotStamp"),
    )
    op.create_index("idx_registration_secret", "PilotSecretRegistrations", ["SecretID"])
    # families issued before this revision have no secret recorded: revoking their secret
    # cannot reach them (they end with their refresh tokens' lifetime, as before)
    op.add_column("RefreshTokens", sa.Column("SecretID", sa.BigInteger(), nullable=True))
    op.create_index("idx_refresh_secret", "RefreshTokens", ["SecretID"])


def downgrade() -> None:
    op.drop_index("idx_refresh_secret", table_name="RefreshTokens")
    with op.batch_alter_table("RefreshTokens") as batch_op:
        batch_op.drop_column("SecretID")
    op.drop_index("idx_registration_secret", table_name="PilotSecretRegistrations")
    op.drop_table("PilotSecretRegistrations")
