"""The suppression list: the one module that writes it (invariant 7).

Rules, the same whoever suppresses or lifts (a webhook, Postmark's 406, an operator):
- A spam complaint is final here: nothing lifts it, and no later suppression rewrites its
  reason. A complaint replaces any other reason.
- Otherwise the newer fact wins: each suppression and each lift carries when it happened
  (`ChangedAt`, `BouncedAt`, or now; never later than now), and a change older than the one
  in force changes nothing. Every lift leaves a mark (`suppression_lifts`) so that an old
  suppression arriving late cannot undo a newer lift either (a complaint still can).
- The list holds address keys (`postroom.addresses.address_key`): every function here takes
  an address as written and keys it first, so every spelling of an address is one entry.
- Changes to one address are applied one at a time (a transaction-scoped advisory lock).
- Operators lift through `lift`, which also asks Postmark to reactivate an address a bounce
  of ours made inactive there; a spam complaint cannot be lifted (Postmark refuses those).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notifier.postmark import Postmark
from postroom import events
from postroom.addresses import address_key
from postroom.models import bounces, suppression_lifts, suppressions
from postroom.outbox import OutboxWriter

SPAM_COMPLAINT = "SpamComplaint"
# The first key of the suppression list's advisory locks (the second: a hash of the address).
_LOCK_CLASS = 0x5350

OPERATOR = "Operator"


class NotSuppressed(LookupError):
    pass


class CannotLift(Exception):
    """A spam complaint: the recipient asked not to get mail."""


@dataclass(frozen=True, slots=True)
class Lifted:
    email: str
    reactivated_bounce: int | None


def _as_of(at: datetime | None) -> sa.ColumnElement[datetime]:
    """When a change happened: the webhook's time, or now; never in the future (a clock that
    is off, or an odd date, must not make a change outrank every later one)."""
    return sa.func.least(
        sa.func.coalesce(sa.cast(at, sa.DateTime(timezone=True)), sa.func.now()), sa.func.now()
    )


async def _lock(conn: AsyncConnection, address: str) -> None:
    """One writer per address at a time, until the caller's transaction ends: webhooks for
    one address that arrive together are applied one after the other."""
    await conn.execute(
        sa.select(sa.func.pg_advisory_xact_lock(_LOCK_CLASS, sa.func.hashtext(address)))
    )


async def suppress(
    conn: AsyncConnection,
    email: str,
    *,
    reason: str,
    origin: str,
    details: str | None,
    at: datetime | None = None,
) -> bool:
    """Suppress `email` as of `at` (now if None), in the caller's transaction; False if that
    changed nothing (already suppressed as strongly and as recently, or lifted later). A
    spam complaint always takes effect."""
    address = address_key(email)
    await _lock(conn, address)
    when = _as_of(at)
    if reason != SPAM_COMPLAINT:
        lifted_later = (
            sa.select(suppression_lifts.c.email)
            .where(suppression_lifts.c.email == address, suppression_lifts.c.changed_at > when)
            .exists()
        )
        if (await conn.execute(sa.select(lifted_later))).scalar_one():
            return False
    existing = suppressions.c
    excluded = pg_insert(suppressions).excluded
    statement = (
        pg_insert(suppressions)
        .values(email=address, reason=reason, origin=origin, details=details, changed_at=when)
        .on_conflict_do_update(
            index_elements=["email"],
            set_={
                "reason": excluded.reason,
                "origin": excluded.origin,
                "details": excluded.details,
                "changed_at": excluded.changed_at,
            },
            # A complaint is never rewritten; it replaces anything else; otherwise newer wins.
            where=sa.and_(
                existing.reason != SPAM_COMPLAINT,
                sa.or_(
                    excluded.reason == SPAM_COMPLAINT,
                    existing.changed_at.is_(None),
                    existing.changed_at < excluded.changed_at,
                ),
            ),
        )
        .returning(suppressions.c.email)
    )
    return (await conn.execute(statement)).first() is not None


async def note_inactive(conn: AsyncConnection, email: str, *, details: str) -> None:
    """Postmark refused to send to `email` (ErrorCode 406): suppress it unless it already is
    (the reason on record, e.g. a bounce's, says more than the 406 does)."""
    address = address_key(email)
    await _lock(conn, address)
    await conn.execute(
        pg_insert(suppressions)
        .values(
            email=address,
            reason="InactiveRecipient",
            origin="Postmark",
            details=details[:2000],
            changed_at=sa.func.now(),
        )
        .on_conflict_do_nothing(index_elements=["email"])
    )


async def unsuppress(conn: AsyncConnection, email: str, *, at: datetime | None = None) -> bool:
    """Lift the suppression of `email` as of `at` (now if None), in the caller's transaction;
    False if there was none to lift, it is a spam complaint, or it is newer than `at`. The
    lift is remembered either way, so a suppression older than it, arriving late, is not
    applied."""
    address = address_key(email)
    await _lock(conn, address)
    when = _as_of(at)
    lifted = await conn.execute(
        sa.delete(suppressions)
        .where(
            suppressions.c.email == address,
            suppressions.c.reason != SPAM_COMPLAINT,
            sa.or_(suppressions.c.changed_at.is_(None), suppressions.c.changed_at <= when),
        )
        .returning(suppressions.c.email)
    )
    lifts = pg_insert(suppression_lifts).values(email=address, changed_at=when)
    await conn.execute(
        lifts.on_conflict_do_update(
            index_elements=["email"],
            set_={
                "changed_at": sa.func.greatest(
                    suppression_lifts.c.changed_at, lifts.excluded.changed_at
                )
            },
        )
    )
    return lifted.first() is not None


async def add(
    engine: AsyncEngine, outbox: OutboxWriter, *, email: str, reason: str, details: str | None
) -> bool:
    """An operator suppresses `email`; False if it already was (then nothing changes)."""
    address = address_key(email)
    async with engine.begin() as conn:
        present = await conn.execute(
            sa.select(suppressions.c.email).where(suppressions.c.email == address)
        )
        if present.first() is not None:
            return False
        if not await suppress(conn, address, reason=reason, origin=OPERATOR, details=details):
            return False
        await outbox.add(
            conn,
            events.Event(
                events.EmailSuppressed(
                    email=address,
                    message_id=None,
                    notification_id=None,
                    user_id=None,
                    reason=reason,
                    origin=OPERATOR,
                ),
                source=events.SOURCE_NOTIFIER,
            ),
        )
    return True


async def lift(
    engine: AsyncEngine, outbox: OutboxWriter, postmark: Postmark, *, email: str
) -> Lifted:
    """Lift the suppression of `email`, and reactivate it at Postmark when a bounce of ours
    made it inactive there. Postmark is asked first: if it refuses, nothing changes here."""
    address = address_key(email)
    async with engine.connect() as conn:
        row = (
            await conn.execute(sa.select(suppressions).where(suppressions.c.email == address))
        ).first()
        if row is None:
            raise NotSuppressed(address)
        if row.reason == SPAM_COMPLAINT:
            raise CannotLift(address)
        bounce = (
            await conn.execute(
                sa.select(bounces.c.id)
                .where(
                    bounces.c.email_key == address,
                    bounces.c.inactive.is_(True),
                    bounces.c.can_activate.is_(True),
                )
                .order_by(bounces.c.received_at.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    if bounce is not None:
        await postmark.reactivate(bounce)
    async with engine.begin() as conn:
        if not await unsuppress(conn, address):
            raise NotSuppressed(address)  # lifted, or turned into a complaint, meanwhile
        await outbox.add(
            conn,
            events.Event(
                events.EmailReactivated(
                    email=address,
                    message_id=None,
                    notification_id=None,
                    user_id=None,
                    origin=OPERATOR,
                ),
                source=events.SOURCE_NOTIFIER,
            ),
        )
    return Lifted(email=address, reactivated_bounce=bounce)
