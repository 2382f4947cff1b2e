"""indexes that serve the newest-first pages of notifications and suppressions

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The lists page by (created_at, key) descending: a B-tree on those columns, read
    # backwards, gives each page without sorting the table. Built concurrently: the notifier
    # keeps writing both tables meanwhile; after an interruption, a rerun builds what is
    # missing (an invalid index left behind must be dropped first).
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_notifications_created_at_id",
            "notifications",
            ["created_at", "id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_suppressions_created_at_email",
            "suppressions",
            ["created_at", "email"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    op.drop_index("ix_suppressions_created_at_email", table_name="suppressions")
    op.drop_index("ix_notifications_created_at_id", table_name="notifications")
