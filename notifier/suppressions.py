"""Operators' changes to the suppression list: add a manual suppression, lift one.

Lifting also asks Postmark to reactivate the address when Postmark made it inactive with a
bounce; a spam complaint cannot be lifted (Postmark refuses to reactivate those)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier.postmark import Postmark
from outbox_relay.outbox import OutboxWriter
from postroom import events
from postroom.models import bounces, suppressions

OPERATOR = "Operator"


class NotSuppressed(LookupError):
    pass


class CannotLift(Exception):
    """A spam complaint: the recipient asked not to get mail."""


@dataclass(frozen=True, slots=True)
class Lifted:
    email: str
    reactivated_bounce: int | None


async def add(
    engine: AsyncEngine, outbox: OutboxWriter, *, email: str, reason: str, details: str | None
) -> bool:
    """Suppress `email`; False if it already was (then nothing changes)."""
    address = email.strip().lower()
    async with engine.begin() as conn:
        inserted = await conn.execute(
            pg_insert(suppressions)
            .values(email=address, reason=reason, origin=OPERATOR, details=details)
            .on_conflict_do_nothing(index_elements=["email"])
            .returning(suppressions.c.email)
        )
        if inserted.first() is None:
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
    address = email.strip().lower()
    async with engine.connect() as conn:
        row = (
            await conn.execute(sa.select(suppressions).where(suppressions.c.email == address))
        ).first()
        if row is None:
            raise NotSuppressed(address)
        if row.reason == "SpamComplaint":
            raise CannotLift(address)
        bounce = (
            await conn.execute(
                sa.select(bounces.c.id)
                .where(
                    sa.func.lower(bounces.c.email) == address,
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
        await conn.execute(sa.delete(suppressions).where(suppressions.c.email == address))
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
