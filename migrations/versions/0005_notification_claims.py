"""notification claims, attempts in doubt, the source record; suppression order

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("notifications", sa.Column("source", postgresql.JSONB(), nullable=True))
    op.add_column(
        "notifications", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("notifications", sa.Column("lease_owner", sa.Text(), nullable=True))
    op.add_column(
        "notifications",
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.add_column(
        "notifications",
        sa.Column("attempt_started_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "notifications",
        sa.Column("attempt_open", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column(
        "notifications", sa.Column("doubt_since", sa.DateTime(timezone=True), nullable=True)
    )
    # A pending notification that earlier code already tried may have reached Postmark: the
    # notifier searches before it sends again, and waits out the settle window from here.
    op.execute(
        "UPDATE notifications SET doubt_since = updated_at "
        "WHERE status = 'pending' AND attempt_id IS NOT NULL"
    )
    op.add_column(
        "suppressions", sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute("UPDATE suppressions SET changed_at = created_at")
    op.create_table(
        "suppression_lifts",
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("email", name=op.f("pk_suppression_lifts")),
    )
    # Built without blocking writes to a table the webhooks keep updating (outside the
    # migration's transaction, as CREATE INDEX CONCURRENTLY must be).
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_notifications_due",
            "notifications",
            ["next_attempt_at"],
            postgresql_where=sa.text("status = 'pending'"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    op.drop_index("ix_notifications_due", table_name="notifications")
    op.drop_table("suppression_lifts")
    op.drop_column("suppressions", "changed_at")
    for column in (
        "doubt_since",
        "attempt_open",
        "attempt_started_at",
        "next_attempt_at",
        "lease_owner",
        "lease_until",
        "source",
    ):
        op.drop_column("notifications", column)
