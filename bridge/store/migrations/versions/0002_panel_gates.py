"""panel gates: who holds each panel's mutation gate

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "panel_gates",
        sa.Column("panel", sa.String(length=64), nullable=False),
        sa.Column("held_by", sa.String(length=64), nullable=True),
        sa.Column("held_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("busy_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("quiet_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("panel", name=op.f("pk_panel_gates")),
    )


def downgrade() -> None:
    op.drop_table("panel_gates")
