"""the outbox's headers as columns, and a heartbeat table: what a change-data-capture
publisher (Debezium's outbox event router) needs to publish the records the relay publishes

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04

The router places whole columns as headers; it cannot read keys out of the `headers` JSON.
So each CloudEvents header the relay writes has a column: `ce_specversion`, `ce_source`,
`ce_time` (text, rendered once by PostgreSQL, so the relay and Debezium send the same bytes),
`content_type`, and `traceparent`. `ce_id`, `ce_type` and `ce_subject` are `event_id`,
`event_type` and `aggregate_id`. The `headers` JSON stays, written as before, for relays
from before this revision.

Every column is added without a table rewrite: the constant defaults are kept in the catalogue
and apply to existing rows; `ce_time`'s default (a clock reading) is set after the column is
added, so it applies to new rows only; rows from before keep NULL and the relay renders their
`created_at` as it always did.

`outbox_heartbeat` is one row a Debezium connector updates on an interval, so its replication
slot moves on while no user changes (docs/debezium.md).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# RFC 3339 in UTC with microseconds, as `ce_time` is sent.
CE_TIME = "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


def upgrade() -> None:
    op.add_column(
        "outbox",
        sa.Column("ce_specversion", sa.Text(), server_default="1.0", nullable=False),
    )
    op.add_column("outbox", sa.Column("ce_source", sa.Text(), nullable=True))
    op.add_column("outbox", sa.Column("ce_time", sa.Text(), nullable=True))
    # Escaped: alembic reads a colon in a statement as the start of a parameter.
    op.execute("ALTER TABLE outbox ALTER COLUMN ce_time SET DEFAULT " + CE_TIME.replace(":", r"\:"))
    op.add_column(
        "outbox",
        sa.Column("content_type", sa.Text(), server_default="application/json", nullable=False),
    )
    op.add_column("outbox", sa.Column("traceparent", sa.Text(), nullable=True))
    op.create_table(
        "outbox_heartbeat",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_heartbeat")),
    )
    # Its one row, there from the start: the heartbeat only ever updates it.
    op.execute("INSERT INTO outbox_heartbeat (id, beat_at) VALUES (1, now())")


def downgrade() -> None:
    op.drop_table("outbox_heartbeat")
    for column in ("traceparent", "content_type", "ce_time", "ce_source", "ce_specversion"):
        op.drop_column("outbox", column)
