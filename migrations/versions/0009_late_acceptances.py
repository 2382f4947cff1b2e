"""late acceptances: Postmark's answers that came after a notification was final or claimed
by another notifier

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds both columns without rewriting the table.
    op.add_column(
        "notifications",
        sa.Column(
            "late_message_ids",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
    )
    op.add_column("notifications", sa.Column("late_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("notifications", "late_at")
    op.drop_column("notifications", "late_message_ids")
