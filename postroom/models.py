"""The tables, as SQLAlchemy Core metadata. Alembic revisions in `migrations/` create them."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

NOW = sa.text("now()")

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    # `postroom.addresses.address_key(email)`: the address's identity (invariant 10).
    sa.Column("email_key", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("email_verified_at", sa.DateTime(timezone=True)),
    sa.Column("version", sa.BigInteger, nullable=False, server_default=sa.text("1")),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    # A BCP 47 language tag in canonical form (`postroom.locales`), or NULL: the language of
    # the user's emails (DEFAULT_LOCALE when NULL or when there are no templates for it).
    sa.Column("locale", sa.Text),
    sa.CheckConstraint("version >= 1", name="version_positive"),
)
# One user per address key: `Ann@x.io`, `ann@X.IO` (and `Émile`, `e\u0301mile`, `ÉMILE`) are
# one mailbox to a person.
USERS_EMAIL_INDEX = "uq_users_email_key"
sa.Index(USERS_EMAIL_INDEX, users.c.email_key, unique=True)

# When a user asked for a new verification link: the resend route's rate limit reads the
# last day of them; they go with the user.
verification_requests = sa.Table(
    "verification_requests",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column(
        "user_id",
        UUID(as_uuid=True),
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
)
sa.Index(
    "ix_verification_requests_user_id_requested_at",
    verification_requests.c.user_id,
    verification_requests.c.requested_at,
)


def rfc3339_sql(at: str) -> str:
    """SQL rendering the timestamptz `at` as `ce_time` is sent: RFC 3339 in UTC with
    microseconds. Rendered once, by PostgreSQL, so every publisher sends the same text."""
    return f"to_char({at} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


CE_TIME = rfc3339_sql("clock_timestamp()")

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    sa.Column("aggregate_type", sa.Text, nullable=False),
    sa.Column("aggregate_id", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("headers", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column(
        "created_at",
        sa.DateTime(timezone=True),
        nullable=False,
        # clock_timestamp(), not now(): now() is the transaction's start, which would make a
        # long transaction's events look older than they are to the lag metrics.
        server_default=sa.text("clock_timestamp()"),
    ),
    sa.Column("published_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("last_error", sa.Text),
    sa.Column("parked_at", sa.DateTime(timezone=True)),
    # The CloudEvents headers as columns (migration 0013), for a publisher that places whole
    # columns as headers (docs/debezium.md). NULL on rows from before it but ce_specversion
    # and content_type.
    sa.Column("ce_specversion", sa.Text, nullable=False, server_default="1.0"),
    sa.Column("ce_source", sa.Text),
    sa.Column("ce_time", sa.Text, server_default=sa.text(CE_TIME.replace(":", "\\:"))),
    sa.Column("content_type", sa.Text, nullable=False, server_default="application/json"),
    sa.Column("traceparent", sa.Text),
    sa.CheckConstraint("shard >= 0", name="shard_non_negative"),
)
# The relay's work list: unpublished, unparked rows of one shard in id order.
sa.Index(
    "ix_outbox_unpublished",
    outbox.c.shard,
    outbox.c.id,
    postgresql_where=sa.and_(outbox.c.published_at.is_(None), outbox.c.parked_at.is_(None)),
)
sa.Index("ix_outbox_created_at_brin", outbox.c.created_at, postgresql_using="brin")

# One row a Debezium connector updates on an interval, so its slot moves on while nothing
# else changes (migration 0013).
outbox_heartbeat = sa.Table(
    "outbox_heartbeat",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("principal", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("request_hash", sa.Text, nullable=False),
    sa.Column("status_code", sa.SmallInteger),
    sa.Column("response_body", JSONB),
    sa.Column("response_headers", JSONB),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
)
sa.Index("ix_idempotency_keys_created_at", idempotency_keys.c.created_at)

notifications = sa.Table(
    "notifications",
    metadata,
    # uuid5 of (source event id, template, recipient): the same event never makes two.
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("user_id", UUID(as_uuid=True)),
    sa.Column("template", sa.Text, nullable=False),
    sa.Column("recipient", sa.Text, nullable=False),
    # Its address key ('' once the recipient is erased): what suppressions and erasure match.
    sa.Column("recipient_key", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'pending'")),
    sa.Column("message_id", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    # The newest send attempt: its id (Metadata of every message it sent), when it began, and
    # whether it is still open (begun, no outcome recorded: in flight, or its sender died).
    sa.Column("attempt_id", sa.Text),
    sa.Column("attempt_started_at", sa.DateTime(timezone=True)),
    sa.Column("attempt_open", sa.Boolean, nullable=False, server_default=sa.false()),
    # The last instant the newest attempt whose outcome is unknown (timeout, reset, 5xx,
    # crash) could have reached Postmark (its start + POSTMARK_TIMEOUT + the start window):
    # Postmark is searched before any resend, and "not found" counts only after the settle.
    sa.Column("doubt_since", sa.DateTime(timezone=True)),
    # The claim: who works on the notification, until when; and when it may next be tried.
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    # The Kafka record that asked for it (topic, partition, offset, key, headers, value): what
    # retries re-plan the email from, and what a dead letter carries.
    sa.Column("source", JSONB),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    # Acceptances that came after the row was final, or no longer claimed by their sender
    # (a call that outlived its claim): their MessageIDs, and when the newest came.
    sa.Column("late_message_ids", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")),
    sa.Column("late_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint(
        "status IN ('pending', 'sent', 'suppressed', 'failed', 'delivered', 'bounced', "
        "'complained')",
        name="status_known",
    ),
)
sa.Index("ix_notifications_user_id", notifications.c.user_id)
sa.Index("ix_notifications_recipient_key", notifications.c.recipient_key)
sa.Index("ix_notifications_message_id", notifications.c.message_id)
# The operators' list, newest first a page at a time (notifier/listings.py).
sa.Index("ix_notifications_created_at_id", notifications.c.created_at, notifications.c.id)
# The retry loop's work list: pending notifications by when they are due.
sa.Index(
    "ix_notifications_due",
    notifications.c.next_attempt_at,
    postgresql_where=notifications.c.status == "pending",
)

# A tombstone per deleted user (invariant 10): the notifier sends them nothing but the
# goodbye, whatever record (replayed, redelivered, late) still names them. No address in it.
erased_users = sa.Table(
    "erased_users",
    metadata,
    sa.Column("user_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
)

suppressions = sa.Table(
    "suppressions",
    metadata,
    # The address key (postroom/addresses.py), not the address as it was written: the list
    # holds identities, and every spelling of a suppressed address is suppressed.
    sa.Column("email", sa.Text, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("origin", sa.Text, nullable=False),
    sa.Column("details", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    # When the fact behind it happened (a webhook's ChangedAt or BouncedAt, or when it was
    # recorded): an older change never undoes a newer one.
    sa.Column("changed_at", sa.DateTime(timezone=True)),
)

# The suppression list, newest first a page at a time (notifier/listings.py).
sa.Index("ix_suppressions_created_at_email", suppressions.c.created_at, suppressions.c.email)

# The newest lift of each address that was ever unsuppressed: a suppression older than it,
# arriving late, changes nothing.
suppression_lifts = sa.Table(
    "suppression_lifts",
    metadata,
    sa.Column("email", sa.Text, primary_key=True),  # the address key, as in suppressions
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
)

bounces = sa.Table(
    "bounces",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("record_type", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("type_code", sa.Integer),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("email_key", sa.Text, nullable=False),  # '' once erased
    sa.Column("message_id", sa.Text),
    sa.Column("notification_id", UUID(as_uuid=True)),
    sa.Column("inactive", sa.Boolean, nullable=False),
    sa.Column("can_activate", sa.Boolean, nullable=False),
    sa.Column("bounced_at", sa.DateTime(timezone=True)),
    sa.Column("details", sa.Text),
    sa.Column("raw", JSONB, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    # The user id Postmark echoed from the message's Metadata (postroom/erasure.py).
    sa.Index("ix_bounces_metadata_user_id", sa.text("((raw -> 'Metadata') ->> 'user_id')")),
)
sa.Index("ix_bounces_email_key", bounces.c.email_key)
# A deletion finds the bounces of the user's emails by these (postroom/erasure.py).
sa.Index("ix_bounces_notification_id", bounces.c.notification_id)
sa.Index("ix_bounces_message_id", bounces.c.message_id)

webhook_receipts = sa.Table(
    "webhook_receipts",
    metadata,
    sa.Column("digest", sa.Text, primary_key=True),
    sa.Column("record_type", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
)
# Pruning finds old receipts by time without a per-row index to maintain.
sa.Index(
    "ix_webhook_receipts_received_at_brin",
    webhook_receipts.c.received_at,
    postgresql_using="brin",
)
