"""users' locale, and the verification links they asked for again

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04

`users.locale`: a BCP 47 tag in canonical form, or NULL (the default locale). Added without a
table rewrite (nullable, no default), so existing users keep NULL.

`verification_requests`: one row per `POST /v1/users/{id}/verification-emails` accepted; the
route's limits (one a minute, five a day by default) read a user's last day of them. They
go with the user (ON DELETE CASCADE).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("locale", sa.Text(), nullable=True))
    op.create_table(
        "verification_requests",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("user_id", UUID(as_uuid=True), nullable=False),
        sa.Column(
            "requested_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_verification_requests_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verification_requests")),
    )
    op.create_index(
        "ix_verification_requests_user_id_requested_at",
        "verification_requests",
        ["user_id", "requested_at"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_verification_requests_user_id_requested_at", table_name="verification_requests"
    )
    op.drop_table("verification_requests")
    op.drop_column("users", "locale")
