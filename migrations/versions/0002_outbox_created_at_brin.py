"""outbox: BRIN index on created_at for pruning published rows

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows arrive in created_at order, so a BRIN index (a few pages, nearly free to keep up)
    # finds the old end of the table for pruning without a B-tree entry per row.
    op.create_index("ix_outbox_created_at_brin", "outbox", ["created_at"], postgresql_using="brin")


def downgrade() -> None:
    op.drop_index("ix_outbox_created_at_brin", table_name="outbox")
