"""What operators list: notifications and suppressions, newest first, a page at a time.

Pages are keyset pages: ordered by (created_at, id) for notifications and (created_at,
email) for suppressions, both descending, each served by an index on those columns; a page
ends where its cursor says (`postroom/cursors.py`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom import cursors
from postroom.addresses import address_key
from postroom.cursors import InvalidCursor
from postroom.models import notifications, suppressions

__all__ = ["InvalidCursor", "Page", "notifications_page", "suppressions_page"]

_TIME = sa.DateTime(timezone=True)


@dataclass(frozen=True, slots=True)
class Page:
    rows: Sequence[Mapping[str, Any]]
    next_cursor: str | None  # None on the last page


async def _page(
    conn: AsyncConnection,
    query: sa.Select[Any],
    *,
    listing: str,
    filters: Mapping[str, str | None],
    key: sa.Column[Any],
    key_of: Callable[[str], sa.ColumnElement[Any]],
    limit: int,
    cursor: str | None,
) -> Page:
    created_at = query.selected_columns.created_at
    if cursor is not None:
        at, after = cursors.decode(cursor, listing, filters)
        query = query.where(
            sa.tuple_(created_at, key) < sa.tuple_(sa.literal(at, _TIME), key_of(after))
        )
    # One row more than the page shows tells whether there is a next page.
    query = query.order_by(created_at.desc(), key.desc()).limit(limit + 1)
    rows = (await conn.execute(query)).mappings().all()
    if len(rows) <= limit:
        return Page(rows, None)
    last = rows[limit - 1]
    next_cursor = cursors.encode(
        listing, filters, created_at=last["created_at"], key=str(last[key.name])
    )
    return Page(rows[:limit], next_cursor)


def _uuid_key(value: str) -> sa.ColumnElement[Any]:
    try:
        return sa.literal(uuid.UUID(value), UUID(as_uuid=True))
    except ValueError:
        raise InvalidCursor("not a uuid") from None


async def notifications_page(
    conn: AsyncConnection,
    *,
    user_id: uuid.UUID | None,
    email: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> Page:
    """A page of notifications, newest first, filtered by user, recipient (any spelling of
    its address: its key) and status; InvalidCursor for a cursor not made with these filters."""
    query = sa.select(notifications)
    if user_id is not None:
        query = query.where(notifications.c.user_id == user_id)
    if email is not None:
        email = address_key(email)
        query = query.where(notifications.c.recipient_key == email)
    if status is not None:
        query = query.where(notifications.c.status == status)
    filters = {"user_id": str(user_id) if user_id else None, "email": email, "status": status}
    return await _page(
        conn,
        query,
        listing="notifications",
        filters=filters,
        key=notifications.c.id,
        key_of=_uuid_key,
        limit=limit,
        cursor=cursor,
    )


async def suppressions_page(conn: AsyncConnection, *, limit: int, cursor: str | None) -> Page:
    """A page of the suppression list, newest first; InvalidCursor for a cursor it did not
    give."""
    return await _page(
        conn,
        sa.select(suppressions),
        listing="suppressions",
        filters={},
        key=suppressions.c.email,
        key_of=lambda email: sa.literal(email, sa.Text),
        limit=limit,
        cursor=cursor,
    )
