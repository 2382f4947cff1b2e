"""User use cases. Each runs inside a transaction its caller opened and never commits.

Every change locks (or inserts) the user row first and then adds its event through the outbox
writer, so a user's events get outbox ids in the order their changes commit (invariant 2).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom import events, tokens
from postroom.db import unique_violation
from postroom.erasure import erase_user
from postroom.models import USERS_EMAIL_INDEX, users
from postroom.outbox import OutboxWriter

UserRow: TypeAlias = sa.Row[*tuple[Any, ...]]

_COLUMNS = (
    users.c.id,
    users.c.email,
    users.c.name,
    users.c.email_verified_at,
    users.c.version,
    users.c.created_at,
    users.c.updated_at,
)


# Built once: compiling a statement per request costs more than running it.
_REGISTER = (
    pg_insert(users)
    .values(id=sa.bindparam("id"), email=sa.bindparam("email"), name=sa.bindparam("name"))
    .on_conflict_do_nothing(index_elements=[sa.func.lower(users.c.email)])
    .returning(*_COLUMNS)
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


async def register_user(
    conn: AsyncConnection, *, email: str, name: str, outbox: OutboxWriter
) -> UserRow:
    """Insert the user and its `user.registered` event; 409 if the address is taken."""
    row = (
        await conn.execute(_REGISTER, {"id": uuid.uuid4(), "email": email, "name": name})
    ).one_or_none()
    if row is None:
        raise EmailTaken()
    await outbox.add(
        conn,
        events.Event(
            events.UserRegistered(
                user_id=row.id,
                version=row.version,
                email=row.email,
                name=row.name,
                registered_at=row.created_at,
            )
        ),
    )
    return row


async def get_user(conn: AsyncConnection, *, user_id: uuid.UUID) -> UserRow:
    row = (await conn.execute(sa.select(*_COLUMNS).where(users.c.id == user_id))).one_or_none()
    if row is None:
        raise UserNotFound()
    return row


async def _lock_user(conn: AsyncConnection, user_id: uuid.UUID) -> UserRow:
    statement = sa.select(*_COLUMNS).where(users.c.id == user_id).with_for_update()
    row = (await conn.execute(statement)).one_or_none()
    if row is None:
        raise UserNotFound()
    return row


async def update_user(
    conn: AsyncConnection,
    *,
    user_id: uuid.UUID,
    name: str | None,
    email: str | None,
    outbox: OutboxWriter,
) -> UserRow:
    """Change name and/or email; `user.updated`, plus `user.email_changed` when the address
    changes (which also resets verification). A request that changes nothing writes nothing."""
    current = await _lock_user(conn, user_id)
    changes: dict[str, Any] = {}
    if name is not None and name != current.name:
        changes["name"] = name
    email_changed = email is not None and email.lower() != current.email.lower()
    if email is not None and email != current.email:
        changes["email"] = email
    if not changes:
        return current
    if email_changed:
        changes["email_verified_at"] = None
    statement = (
        sa.update(users)
        .where(users.c.id == user_id)
        .values(**changes, version=users.c.version + 1, updated_at=sa.func.now())
        .returning(*_COLUMNS)
    )
    try:
        row = (await conn.execute(statement)).one()
    except IntegrityError as exc:
        if unique_violation(exc) == USERS_EMAIL_INDEX:
            raise EmailTaken() from exc
        raise
    changed = [field for field in ("name", "email") if field in changes]
    await outbox.add(
        conn,
        events.Event(
            events.UserUpdated(
                user_id=row.id,
                version=row.version,
                email=row.email,
                name=row.name,
                changed=changed,
            )
        ),
    )
    if email_changed:
        await outbox.add(
            conn,
            events.Event(
                events.UserEmailChanged(
                    user_id=row.id,
                    version=row.version,
                    old_email=current.email,
                    new_email=row.email,
                    name=row.name,
                )
            ),
        )
    return row


async def delete_user(conn: AsyncConnection, *, user_id: uuid.UUID, outbox: OutboxWriter) -> None:
    """Delete the user and add `user.deleted` (which carries the address for the goodbye)."""
    statement = sa.delete(users).where(users.c.id == user_id).returning(*_COLUMNS)
    row = (await conn.execute(statement)).one_or_none()
    if row is None:
        raise UserNotFound()
    await erase_user(conn, user_id=row.id, email=row.email)
    await outbox.add(
        conn,
        events.Event(
            events.UserDeleted(
                user_id=row.id,
                version=row.version + 1,
                email=row.email,
                name=row.name,
                deleted_at=datetime.now(UTC),
            )
        ),
    )


async def claimed_user(
    conn: AsyncConnection, *, claim: tokens.VerificationClaim, lock: bool = False
) -> UserRow:
    """The user a verification token names, if it still has the token's address.
    Reads only (the page a link opens shows it before anything changes)."""
    statement = sa.select(*_COLUMNS).where(users.c.id == claim.user_id)
    current = (await conn.execute(statement.with_for_update() if lock else statement)).first()
    if current is None or current.email.lower() != claim.email.lower():
        raise LinkSuperseded()
    return current


async def verify_email(
    conn: AsyncConnection, *, claim: tokens.VerificationClaim, outbox: OutboxWriter
) -> UserRow:
    """Mark the claimed address verified (LinkSuperseded when the user or that address is gone).
    Verifying an already verified address again answers the same and writes nothing."""
    current = await claimed_user(conn, claim=claim, lock=True)
    if current.email_verified_at is not None:
        return current
    row = (
        await conn.execute(
            sa.update(users)
            .where(users.c.id == claim.user_id)
            .values(
                email_verified_at=sa.func.now(),
                version=users.c.version + 1,
                updated_at=sa.func.now(),
            )
            .returning(*_COLUMNS)
        )
    ).one()
    await outbox.add(
        conn,
        events.Event(
            events.UserEmailVerified(
                user_id=row.id,
                version=row.version,
                email=row.email,
                verified_at=row.email_verified_at,
            )
        ),
    )
    return row
