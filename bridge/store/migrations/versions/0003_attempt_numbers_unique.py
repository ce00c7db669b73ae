"""attempts: one number per attempt of a step

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

An attempt the circuit breaker held back used to share its number with the next one. Those steps are numbered again in the order their attempts were made (as every
other step already is), then a unique index keeps it so; it also serves the lookups by
step the old index served.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        sa.text(
            """
            UPDATE attempts SET number = (
                SELECT count(*) FROM attempts AS earlier
                WHERE earlier.step_id = attempts.step_id AND earlier.id <= attempts.id
            )
            WHERE step_id IN (SELECT step_id FROM attempts GROUP BY step_id, number HAVING count(*) > 1)
            """
        )
    )
    op.create_index("uq_attempts_step_id_number", "attempts", ["step_id", "number"], unique=True)
    op.drop_index("ix_attempts_step_id", table_name="attempts")


def downgrade() -> None:
    op.create_index("ix_attempts_step_id", "attempts", ["step_id"], unique=False)
    op.drop_index("uq_attempts_step_id_number", table_name="attempts")
