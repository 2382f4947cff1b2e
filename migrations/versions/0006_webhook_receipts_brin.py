"""a BRIN index on webhook receipts' arrival, for pruning

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_webhook_receipts_received_at_brin",
            "webhook_receipts",
            ["received_at"],
            postgresql_using="brin",
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    op.drop_index("ix_webhook_receipts_received_at_brin", table_name="webhook_receipts")
