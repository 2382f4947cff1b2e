"""What deleting a user erases from Postroom's own tables, in the deletion's transaction
(invariant 9). What identifies the person goes; pseudonymous ids stay for operators (the
user id, notification ids, bounce ids, MessageIDs).

- Stored idempotency answers that show the user become a 410 problem: a replay of the
  request that created them says the user is gone, and shows nothing of them.
- Notifications that reached a final status lose their recipient, their source record and
  any mention of the address in their error. Pending ones (and the goodbye, which the
  deletion itself asks for) keep what their sending needs; the notifier erases them when the
  goodbye is final (`notifier/store.py`).
- Bounces of the address lose their raw body, details and address.
Kept: the suppression list (so the address is never mailed again), and what is already on
Kafka, until the topics' retention removes it (docs/operations.md)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.models import bounces, idempotency_keys, notifications

ERASED = ""
_GONE = {
    "type": "urn:postroom:problem:user-deleted",
    "title": "Gone",
    "status": 410,
    "detail": "The user this request created or changed has been deleted.",
}


async def erase_user(conn: AsyncConnection, *, user_id: uuid.UUID, email: str) -> None:
    """Erase what identifies the user, in the caller's (the deletion's) transaction."""
    address = email.lower()
    await conn.execute(
        sa.update(idempotency_keys)
        .where(idempotency_keys.c.response_body["id"].astext == str(user_id))
        .values(
            status_code=410,
            response_body=_GONE,
            response_headers={"content-type": "application/problem+json"},
        )
    )
    mine = sa.or_(
        notifications.c.user_id == user_id, sa.func.lower(notifications.c.recipient) == address
    )
    await conn.execute(
        sa.update(notifications)
        .where(mine, notifications.c.status != "pending")
        .values(
            recipient=ERASED,
            source=sa.null(),
            last_error=sa.func.replace(
                sa.func.replace(notifications.c.last_error, email, "[erased]"),
                address,
                "[erased]",
            ),
        )
    )
    await conn.execute(
        sa.update(bounces)
        .where(sa.func.lower(bounces.c.email) == address)
        .values(email=ERASED, details=None, raw={})
    )
