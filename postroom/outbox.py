"""The outbox writer: adds an event row to the caller's transaction.

Invariants (DESIGN 1-2):
- The writer never commits or begins; the use case owns the transaction, so the state change
  and the event that announces it are committed together or not at all.
- The caller has already locked (or just inserted) the aggregate's row, so the ids of one
  aggregate's events follow commit order.
- Each insert also calls `pg_notify` on one channel with a constant payload. PostgreSQL folds
  identical notifications raised in one transaction into one and delivers it only at commit,
  so every transaction wakes the relays at most once, and a rolled-back one never does.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.events import Event
from postroom.models import outbox
from postroom.tracing import current_traceparent

NOTIFY_CHANNEL = "postroom_outbox"


def shard_of(aggregate_id: str, shards: int) -> int:
    """The relay shard of an aggregate: stable across processes and releases (CRC-32)."""
    return zlib.crc32(aggregate_id.encode()) % shards


def _insert_statement(*, notify: bool) -> sa.Select[Any]:
    inserted = (
        sa.insert(outbox)
        .values(
            event_id=sa.bindparam("event_id"),
            aggregate_type=sa.bindparam("aggregate_type"),
            aggregate_id=sa.bindparam("aggregate_id"),
            event_type=sa.bindparam("event_type"),
            payload=sa.bindparam("payload", type_=outbox.c.payload.type),
            headers=sa.bindparam("headers", type_=outbox.c.headers.type),
            shard=sa.bindparam("shard"),
        )
        .returning(outbox.c.id)
        .cte("inserted")
    )
    if not notify:
        return sa.select(inserted.c.id)
    notified = sa.func.pg_notify(sa.literal(NOTIFY_CHANNEL), sa.literal(""))
    return sa.select(inserted.c.id).add_columns(notified.label("notified"))


_INSERT = {True: _insert_statement(notify=True), False: _insert_statement(notify=False)}

# Many rows in one statement: WITH ORDINALITY keeps the identity values in the order given.
_INSERT_MANY_SQL = """
    WITH inserted AS (
        INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers,
                            shard)
        SELECT v.event_id, v.aggregate_type, v.aggregate_id, v.event_type,
               CAST(v.payload AS jsonb), CAST(v.headers AS jsonb), v.shard
        FROM unnest(CAST(:event_ids AS uuid[]), CAST(:aggregate_types AS text[]),
                    CAST(:aggregate_ids AS text[]), CAST(:event_types AS text[]),
                    CAST(:payloads AS text[]), CAST(:headers AS text[]),
                    CAST(:shards AS int[]))
             WITH ORDINALITY
             AS v(event_id, aggregate_type, aggregate_id, event_type, payload, headers, shard, n)
        ORDER BY v.n
        RETURNING id
    )
    SELECT count(*) {notify} FROM inserted
"""
_INSERT_MANY = {
    True: sa.text(
        _INSERT_MANY_SQL.format(notify=f", pg_notify('{NOTIFY_CHANNEL}', '') AS notified")
    ),
    False: sa.text(_INSERT_MANY_SQL.format(notify="")),
}


def _row(event: Event, shards: int) -> dict[str, Any]:
    headers = event.headers()
    traceparent = current_traceparent()
    if traceparent and "traceparent" not in headers:
        headers["traceparent"] = traceparent  # the request's trace, continued downstream
    return {
        "event_id": event.event_id,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "event_type": event.event_type,
        "payload": event.payload(),
        "headers": headers,
        "shard": shard_of(event.aggregate_id, shards),
    }


async def add_event(
    conn: AsyncConnection, event: Event, *, shards: int, notify: bool = True
) -> int:
    """Add `event` to the transaction open on `conn`; return its outbox id. Without
    `notify` the relays find the row at their next poll (OUTBOX_NOTIFY=false)."""
    if not conn.in_transaction():
        raise RuntimeError("add_event needs the caller's open transaction")
    result = await conn.execute(
        _INSERT[notify],
        _row(event, shards),
    )
    outbox_id: int = result.scalar_one()
    return outbox_id


@dataclass(frozen=True, slots=True)
class OutboxWriter:
    """The outbox as the use cases see it: where events go, configured once per process."""

    shards: int
    notify: bool = True

    async def add(self, conn: AsyncConnection, event: Event) -> int:
        return await add_event(conn, event, shards=self.shards, notify=self.notify)

    async def add_many(self, conn: AsyncConnection, batch: Sequence[Event]) -> None:
        """Add several events to the caller's transaction in one statement, in the order
        given; one NOTIFY for them all."""
        if not batch:
            return
        if not conn.in_transaction():
            raise RuntimeError("add_many needs the caller's open transaction")
        rows = [_row(event, self.shards) for event in batch]
        await conn.execute(
            _INSERT_MANY[self.notify],
            {
                "event_ids": [row["event_id"] for row in rows],
                "aggregate_types": [row["aggregate_type"] for row in rows],
                "aggregate_ids": [row["aggregate_id"] for row in rows],
                "event_types": [row["event_type"] for row in rows],
                "payloads": [json.dumps(row["payload"]) for row in rows],
                "headers": [json.dumps(row["headers"]) for row in rows],
                "shards": [row["shard"] for row in rows],
            },
        )
