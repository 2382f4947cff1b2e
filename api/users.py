"""User use cases. Every change is atomic and never commits a caller's transaction: a
registration, and an update of a user unchanged since it was read, are one statement (the
change and its events together, `OutboxWriter.add_with`); the rest run in a transaction the
caller opened, or one of their own.

Every change locks (or inserts) the user row before its events are added, so a user's
events get outbox ids in the order their changes commit (invariant 2). They speak to
PostgreSQL through asyncpg directly: this is the path every write takes, and the SQL is short
enough to read as SQL (the tables are `postroom/models.py`).
"""

from __future__ import annotations

import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from postroom import events, tokens
from postroom.addresses import address_key, same_mailbox
from postroom.db import Connection
from postroom.erasure import erase_user
from postroom.models import USERS_EMAIL_INDEX
from postroom.outbox import OutboxWriter

# Every statement returns the columns of `User`, in its order.
# The user and its clock are set here, so that `user.registered` can be written in the same
# statement (`OutboxWriter.add_with`).
_REGISTER = """
INSERT INTO users (id, email, email_key, name, version, created_at, updated_at)
VALUES ($1, $2, $5, $3, 1, $4, $4)
ON CONFLICT (email_key) DO NOTHING
RETURNING id, email, name, email_verified_at, version, created_at, updated_at
"""
_READ = """
SELECT id, email, name, email_verified_at, version, created_at, updated_at
FROM users WHERE id = $1
"""
_LOCK = """
SELECT id, email, name, email_verified_at, version, created_at, updated_at
FROM users WHERE id = $1 FOR UPDATE
"""
# The change, if the user is still at the version it was read at ($5); $4: the address
# changes, so its verification resets; $6: the address's key. No row back: the user changed
# or went meanwhile.
_UPDATE = """
UPDATE users SET
    name = $2,
    email = $3,
    email_key = $6,
    email_verified_at = CASE WHEN $4 THEN NULL ELSE email_verified_at END,
    version = version + 1,
    updated_at = now()
WHERE id = $1 AND version = $5
RETURNING id, email, name, email_verified_at, version, created_at, updated_at
"""
_DELETE = """
DELETE FROM users WHERE id = $1
RETURNING id, email, name, email_verified_at, version, created_at, updated_at
"""
_VERIFY = """
UPDATE users SET email_verified_at = now(), version = version + 1, updated_at = now()
WHERE id = $1
RETURNING id, email, name, email_verified_at, version, created_at, updated_at
"""


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    email: str
    name: str
    email_verified_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: asyncpg.Record) -> User:
        return cls(
            record["id"],
            record["email"],
            record["name"],
            record["email_verified_at"],
            record["version"],
            record["created_at"],
            record["updated_at"],
        )


class Refused(Exception):
    """A use case refused the change; nothing was written. The HTTP layer answers each kind
    with its problem (api/routes.py)."""


class UserNotFound(Refused):
    """No user has this id."""


class EmailTaken(Refused):
    """Another user already has this address."""


class LinkSuperseded(Refused):
    """The verification link names an address the user no longer has, or a deleted user."""


async def register_user(conn: Connection, *, email: str, name: str, outbox: OutboxWriter) -> User:
    """Insert the user and its `user.registered` event, in one statement (EmailTaken if the
    address is taken: then nothing is written)."""
    user_id = uuid.uuid4()
    now = datetime.now(UTC)
    event = events.Event(
        events.UserRegistered(user_id=user_id, version=1, email=email, name=name, registered_at=now)
    )
    record = await outbox.add_with(
        conn, _REGISTER, (user_id, email, name, now, address_key(email)), [event]
    )
    if record is None:
        raise EmailTaken()
    return User.of(record)


async def get_user(conn: Connection, *, user_id: uuid.UUID) -> User:
    record = await conn.fetchrow(_READ, user_id)
    if record is None:
        raise UserNotFound()
    return User.of(record)


def _update_events(current: User, *, name: str, email: str) -> list[events.Event]:
    """`user.updated`, and `user.email_changed` when the mailbox changes (any change but letter
    case: `same_mailbox`), for changing `current` to `name` and `email`."""
    version = current.version + 1
    changed = [
        f
        for f, old, new in (("name", current.name, name), ("email", current.email, email))
        if old != new
    ]
    announced = [
        events.Event(
            events.UserUpdated(
                user_id=current.id, version=version, email=email, name=name, changed=changed
            )
        )
    ]
    if not same_mailbox(current.email, email):
        announced.append(
            events.Event(
                events.UserEmailChanged(
                    user_id=current.id,
                    version=version,
                    old_email=current.email,
                    new_email=email,
                    name=name,
                )
            )
        )
    return announced


async def update_user(
    conn: Connection,
    *,
    user_id: uuid.UUID,
    name: str | None,
    email: str | None,
    outbox: OutboxWriter,
) -> User:
    """Change name and/or email; `user.updated`, plus `user.email_changed` when the address
    changes (which also resets verification). A request that changes nothing writes nothing.

    Optimistic first: read the user, then change it and add its events in one statement that
    applies only if the user is still at the version read (two round trips, no lock held
    while Python works). If another change came in between, do it again under the row's
    lock, in a transaction, where it cannot miss."""
    for locked in (False, True):
        async with conn.transaction() if locked else nullcontext():
            record = await conn.fetchrow(_LOCK if locked else _READ, user_id)
            if record is None:
                raise UserNotFound()
            current = User.of(record)
            new_name = current.name if name is None else name
            new_email = current.email if email is None else email
            if (new_name, new_email) == (current.name, current.email):
                return current
            new_key = address_key(new_email)
            email_changed = not same_mailbox(current.email, new_email)
            try:
                updated = await outbox.add_with(
                    conn,
                    _UPDATE,
                    (user_id, new_name, new_email, email_changed, current.version, new_key),
                    _update_events(current, name=new_name, email=new_email),
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == USERS_EMAIL_INDEX:
                    raise EmailTaken() from None
                raise
            if updated is not None:
                return User.of(updated)
    raise AssertionError("a change under the row lock applies")  # pragma: no cover


async def delete_user(conn: Connection, *, user_id: uuid.UUID, outbox: OutboxWriter) -> None:
    """Delete the user and add `user.deleted` (which carries the address for the goodbye)."""
    record = await conn.fetchrow(_DELETE, user_id)
    if record is None:
        raise UserNotFound()
    user = User.of(record)
    await erase_user(conn, user_id=user.id, email=user.email)
    await outbox.add(
        conn,
        events.Event(
            events.UserDeleted(
                user_id=user.id,
                version=user.version + 1,
                email=user.email,
                name=user.name,
                deleted_at=datetime.now(UTC),
            )
        ),
    )


async def claimed_user(
    conn: Connection, *, claim: tokens.VerificationClaim, lock: bool = False
) -> User:
    """The user a verification token names, if it still has the token's address
    (LinkSuperseded if not). Reads only (the page a link opens shows it before anything
    changes)."""
    record = await conn.fetchrow(_LOCK if lock else _READ, claim.user_id)
    if record is None or not same_mailbox(claim.email, record["email"]):
        raise LinkSuperseded()
    return User.of(record)


async def verify_email(
    conn: Connection, *, claim: tokens.VerificationClaim, outbox: OutboxWriter
) -> User:
    """Mark the claimed address verified (LinkSuperseded when the user or that address is
    gone). Verifying an already verified address again answers the same and writes nothing."""
    current = await claimed_user(conn, claim=claim, lock=True)
    if current.email_verified_at is not None:
        return current
    record = await conn.fetchrow(_VERIFY, claim.user_id)
    assert record is not None  # the row is locked
    user = User.of(record)
    assert user.email_verified_at is not None
    await outbox.add(
        conn,
        events.Event(
            events.UserEmailVerified(
                user_id=user.id,
                version=user.version,
                email=user.email,
                verified_at=user.email_verified_at,
            )
        ),
    )
    return user
