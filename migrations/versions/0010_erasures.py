"""erased users: a tombstone per deleted user, so nothing but the goodbye is sent to them

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "erased_users",
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "erased_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_erased_users")),
    )
    # Users deleted before this revision: those the notifier saw a goodbye for, and those
    # whose deletion is still in the outbox.
    op.execute(
        """
        INSERT INTO erased_users (user_id, erased_at)
        SELECT user_id, min(at) FROM (
            SELECT user_id, created_at AS at FROM notifications
            WHERE event_type = 'user.deleted' AND user_id IS NOT NULL
            UNION ALL
            SELECT CAST(aggregate_id AS uuid), created_at FROM outbox
            WHERE aggregate_type = 'user' AND event_type = 'user.deleted'
        ) AS deleted
        GROUP BY user_id
        ON CONFLICT (user_id) DO NOTHING
        """
    )


def downgrade() -> None:
    op.drop_table("erased_users")
