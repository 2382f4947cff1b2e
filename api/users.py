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

import math
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

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
INSERT INTO users (id, email, email_key, name, version, created_at, updated_at, locale)
VALUES ($1, $2, $5, $3, 1, $4, $4, $6)
ON CONFLICT (email_key) DO NOTHING
RETURNING id, email, name, email_verified_at, version, created_at, updated_at, locale
"""
_READ = """
SELECT id, email, name, email_verified_at, version, created_at, updated_at, locale
FROM users WHERE id = $1
"""
_LOCK = """
SELECT id, email, name, email_verified_at, version, created_at, updated_at, locale
FROM users WHERE id = $1 FOR UPDATE
"""
# The change, if the user is still at the version it was read at ($5); $4: the address
# changes, so its verification resets; $6: the address's key; $7 the locale. No row back: the
# user changed or went meanwhile.
_UPDATE = """
UPDATE users SET
    name = $2,
    email = $3,
    email_key = $6,
    locale = $7,
    email_verified_at = CASE WHEN $4 THEN NULL ELSE email_verified_at END,
    version = version + 1,
    updated_at = now()
WHERE id = $1 AND version = $5
RETURNING id, email, name, email_verified_at, version, created_at, updated_at, locale
"""
_DELETE = """
DELETE FROM users WHERE id = $1
RETURNING id, email, name, email_verified_at, version, created_at, updated_at, locale
"""
_VERIFY = """
UPDATE users SET email_verified_at = now(), version = version + 1, updated_at = now()
WHERE id = $1
RETURNING id, email, name, email_verified_at, version, created_at, updated_at, locale
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
    locale: str | None = None

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
            record["locale"],
        )


class Refused(Exception):
    """A use case refused the change; nothing was written. The HTTP layer answers each kind
    with its problem (api/routes.py)."""


class UserNotFound(Refused):
    """No user has this id."""


class EmailTaken(Refused):
    """Another user already has this address."""


class AlreadyVerified(Refused):
    """The user's address is verified already: a new link has nothing to do."""


class AskedTooOften(Refused):
    """A new verification link was asked for too soon; `retry_after` seconds until one may."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class LinkSuperseded(Refused):
    """The verification link names an address the user no longer has, or a deleted user."""


async def register_user(
    conn: Connection,
    *,
    email: str,
    name: str,
    outbox: OutboxWriter,
    locale: str | None = None,
) -> User:
    """Insert the user and its `user.registered` event, in one statement (EmailTaken if the
    address is taken: then nothing is written)."""
    user_id = uuid.uuid4()
    now = datetime.now(UTC)
    event = events.Event(
        events.UserRegistered(
            user_id=user_id, version=1, email=email, name=name, registered_at=now, locale=locale
        )
    )
    record = await outbox.add_with(
        conn, _REGISTER, (user_id, email, name, now, address_key(email), locale), [event]
    )
    if record is None:
        raise EmailTaken()
    return User.of(record)


async def get_user(conn: Connection, *, user_id: uuid.UUID) -> User:
    record = await conn.fetchrow(_READ, user_id)
    if record is None:
        raise UserNotFound()
    return User.of(record)


def _update_events(
    current: User, *, name: str, email: str, locale: str | None
) -> list[events.Event]:
    """`user.updated`, and `user.email_changed` when the mailbox changes (any change but letter
    case: `same_mailbox`), for changing `current` to `name`, `email` and `locale`."""
    version = current.version + 1
    fields: list[tuple[Literal["name", "email", "locale"], str | None, str | None]] = [
        ("name", current.name, name),
        ("email", current.email, email),
        ("locale", current.locale, locale),
    ]
    changed = [field for field, old, new in fields if old != new]
    announced = [
        events.Event(
            events.UserUpdated(
                user_id=current.id,
                version=version,
                email=email,
                name=name,
                changed=changed,
                locale=locale,
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
                    locale=locale,
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
    locale: str | None = None,
    clear_locale: bool = False,
) -> User:
    """Change name, email and/or locale (None: unchanged; `clear_locale`: back to none);
    `user.updated`, plus
    `user.email_changed` when the address changes (which also resets verification). A
    request that changes nothing writes nothing.

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
            new_locale = None if clear_locale else current.locale if locale is None else locale
            if (new_name, new_email, new_locale) == (current.name, current.email, current.locale):
                return current
            new_key = address_key(new_email)
            email_changed = not same_mailbox(current.email, new_email)
            try:
                updated = await outbox.add_with(
                    conn,
                    _UPDATE,
                    (
                        user_id,
                        new_name,
                        new_email,
                        email_changed,
                        current.version,
                        new_key,
                        new_locale,
                    ),
                    _update_events(current, name=new_name, email=new_email, locale=new_locale),
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
                locale=user.locale,
            )
        ),
    )


# A user's requests of the last day, latest first, with the database's clock reading.
_RECENT_REQUESTS = """
SELECT requested_at, now() AS now FROM verification_requests
WHERE user_id = $1 AND requested_at > now() - interval '1 day'
ORDER BY requested_at DESC LIMIT $2
"""
_FORGET_OLD_REQUESTS = """
DELETE FROM verification_requests WHERE user_id = $1 AND requested_at <= now() - interval '1 day'
"""
_REQUEST = "INSERT INTO verification_requests (user_id) VALUES ($1) RETURNING requested_at"
_DAY = timedelta(days=1)


async def request_verification(
    conn: Connection,
    *,
    user_id: uuid.UUID,
    outbox: OutboxWriter,
    interval: float,
    daily: int,
) -> tuple[User, datetime]:
    """Ask for a new verification link for the user's current address: `user.verification_
    requested`, and when. Refused when the user is gone (UserNotFound), verified already
    (AlreadyVerified), or asked within `interval` seconds or `daily` times in the last day
    (AskedTooOften). Runs in the caller's transaction; the user's row lock orders requests."""
    record = await conn.fetchrow(_LOCK, user_id)
    if record is None:
        raise UserNotFound()
    user = User.of(record)
    if user.email_verified_at is not None:
        raise AlreadyVerified()
    recent = await conn.fetch(_RECENT_REQUESTS, user_id, daily)
    if recent:
        now = recent[0]["now"]
        wait = interval - (now - recent[0]["requested_at"]).total_seconds()
        if len(recent) >= daily:  # the oldest of them leaves the day's window first
            wait = max(wait, (recent[-1]["requested_at"] + _DAY - now).total_seconds())
        if wait > 0:
            raise AskedTooOften(max(1, math.ceil(wait)))
    await conn.execute(_FORGET_OLD_REQUESTS, user_id)
    requested_at: datetime = await conn.fetchval(_REQUEST, user_id)
    await outbox.add(
        conn,
        events.Event(
            events.UserVerificationRequested(
                user_id=user.id,
                version=user.version,
                email=user.email,
                name=user.name,
                requested_at=requested_at,
                locale=user.locale,
            )
        ),
    )
    return user, requested_at


async def claimed_user(
    conn: Connection, *, claim: tokens.VerificationClaim, lock: bool = False
) -> User:
    """The user a verification token names, if it still has the token's address
    (LinkSuperseded if not). Reads only (the page a link opens shows it before anything
    changes)."""
    record = await conn.fetchrow(_LOCK if lock else _READ, claim.user_id)
    if record is None or not claim.names(record["email"]):
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
                locale=user.locale,
            )
        ),
    )
    return user
