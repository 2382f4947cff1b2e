"""bounces and webhook receipts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bounces",
        # Postmark's bounce ID: a 64-bit integer beyond 2^53, so bigint, never a float.
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("record_type", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("type_code", sa.Integer(), nullable=True),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("notification_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("inactive", sa.Boolean(), nullable=False),
        sa.Column("can_activate", sa.Boolean(), nullable=False),
        sa.Column("bounced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("raw", postgresql.JSONB(), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bounces")),
    )
    op.create_index("ix_bounces_email", "bounces", ["email"])
    op.create_table(
        "webhook_receipts",
        # sha256 of the canonical body: Postmark re-posts the same body until it gets a 200.
        sa.Column("digest", sa.Text(), nullable=False),
        sa.Column("record_type", sa.Text(), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_webhook_receipts")),
    )


def downgrade() -> None:
    op.drop_table("webhook_receipts")
    op.drop_table("bounces")
