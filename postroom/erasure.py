"""What deleting a user erases from Postroom's own tables, in the deletion's transaction
(invariant 9). What identifies the person goes; pseudonymous ids stay for operators (the
user id, notification ids, bounce ids, MessageIDs).

- Stored idempotency answers that show the user become a 410 problem: a replay of the
  request that created them says the user is gone, and shows nothing of them.
- Notifications that reached a final status lose their recipient, their source record and
  any mention of the address in their error. Pending ones are the notifier's, which may be
  sending one right now: it settles them (the goodbye, which the deletion itself asks for,
  is sent; the others are not) and erases each as it reaches a final status
  (`notifier/store.py`).
- Bounces lose their raw body, details and address: those of the address, and those of any
  email of the user's (by notification, MessageID, a late acceptance's MessageID, or the user
  id Postmark echoed in the message's Metadata), whatever address it went to: a bounce of an
  address the user had before, or one recorded before its MessageID was known.
- The user's id goes into `erased_users`, a tombstone the notifier reads when it records,
  claims and begins an attempt: nothing is sent to an erased user but the goodbye, whatever
  record (replayed, redelivered, read late) still names them (invariant 10).

Notifications and bounces are found by the address's key (postroom/addresses.py), so every
spelling of the address is reached, whatever letter case or encoding Postmark reported.
Kept: the suppression list (so the address is never mailed again), and what is already on
Kafka, until the topics' retention removes it (docs/operations.md)."""

from __future__ import annotations

import json
import uuid

from postroom.addresses import address_key
from postroom.db import Connection
from postroom.problems import PROBLEM_MEDIA_TYPE, USER_DELETED

_GONE = json.dumps(
    {
        "type": USER_DELETED.uri,
        "title": USER_DELETED.title,
        "status": USER_DELETED.status,
        "detail": "The user this request created or changed has been deleted.",
    }
)
_PROBLEM_HEADERS = json.dumps({"content-type": PROBLEM_MEDIA_TYPE})

# $1: the user id, $2: the address as stored, $3: its key; $4, $5: the stored 410.
# Every CTE reads the rows as they were before the statement: `mine` sees the user's
# notifications with their addresses, message ids and keys still in them.
_ERASE = """
WITH tombstone AS (
    INSERT INTO erased_users (user_id) VALUES ($1::uuid) ON CONFLICT (user_id) DO NOTHING
),
answers AS (
    UPDATE idempotency_keys SET status_code = 410, response_body = $4::jsonb,
                                response_headers = $5::jsonb
    -- A user's answer (`id`), or a new verification link's (`user_id`).
    WHERE $1::uuid::text IN (response_body ->> 'id', response_body ->> 'user_id')
),
mine AS (
    SELECT id, message_id, late_message_ids, recipient_key FROM notifications
    WHERE user_id = $1::uuid
),
mail AS (
    UPDATE notifications SET
        recipient = '',
        recipient_key = '',
        source = NULL,
        last_error = replace(replace(replace(last_error, recipient, '[erased]'), $2, '[erased]'),
                             $3, '[erased]')
    WHERE (user_id = $1::uuid OR recipient_key = $3) AND status <> 'pending'
),
-- Each way a bounce is linked to the user, apart, so that each reads its own index.
theirs AS (
    SELECT id FROM bounces WHERE email_key = $3
    UNION SELECT b.id FROM bounces AS b JOIN mine AS m ON b.notification_id = m.id
    UNION SELECT b.id FROM bounces AS b JOIN mine AS m ON b.message_id = m.message_id
    UNION SELECT b.id FROM bounces AS b
          JOIN (SELECT unnest(late_message_ids) AS message_id FROM mine) AS l
          ON b.message_id = l.message_id
    UNION SELECT id FROM bounces WHERE (raw -> 'Metadata') ->> 'user_id' = $1::uuid::text
    -- an address the user had before: its bounces, unless another user's email drew them
    UNION SELECT b.id FROM bounces AS b JOIN mine AS m ON b.email_key = m.recipient_key
          WHERE m.recipient_key <> '' AND NOT EXISTS (
              SELECT 1 FROM notifications AS o
              WHERE o.id = b.notification_id AND o.user_id <> $1::uuid)
)
UPDATE bounces SET email = '', email_key = '', details = NULL, raw = '{}'::jsonb
WHERE id IN (SELECT id FROM theirs) AND email_key <> ''
"""


async def erase_user(conn: Connection, *, user_id: uuid.UUID, email: str) -> None:
    """Erase what identifies the user, in the caller's (the deletion's) transaction, in one
    statement."""
    await conn.execute(_ERASE, user_id, email, address_key(email), _GONE, _PROBLEM_HEADERS)
