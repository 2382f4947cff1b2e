"""indexes that let a user's deletion find every bounce of theirs

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04

A deletion erases the bounces of the user's emails wherever they were linked: by
notification, by MessageID, or by the user id Postmark echoed in the message's Metadata
(`postroom/erasure.py`). Without these indexes each deletion would read the whole table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Built concurrently: the notifier keeps writing bounces meanwhile (as 0007 does; after an
    # interruption, drop an invalid index left behind and run again).
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_bounces_notification_id",
            "bounces",
            ["notification_id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_bounces_message_id",
            "bounces",
            ["message_id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_bounces_metadata_user_id",
            "bounces",
            [sa.text("(raw -> 'Metadata' ->> 'user_id')")],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    op.drop_index("ix_bounces_metadata_user_id", table_name="bounces")
    op.drop_index("ix_bounces_message_id", table_name="bounces")
    op.drop_index("ix_bounces_notification_id", table_name="bounces")
