"""The outbox writer: adds an event row to the caller's transaction.

Invariants (DESIGN 1-2):
- The writer never commits or begins; the use case owns the transaction, so the state change
  and the event that announces it are committed together or not at all.
- The caller has already locked (or just inserted) the aggregate's row, so the ids of one
  aggregate's events follow commit order.
- Each insert also calls `pg_notify` on one channel with a constant payload. PostgreSQL folds
  identical notifications raised in one transaction into one and delivers it only at commit,
  so every transaction wakes the relays at most once, and a rolled-back one never does.
- The CloudEvents headers that vary by event (`ce_source`, `traceparent`) go in columns of
  their own (and, for relays from before migration 0013, in the `headers` JSON too), so a
  publisher that reads whole columns (Debezium's outbox event router) sends what the relay
  sends.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.db import Connection
from postroom.events import Event
from postroom.models import rfc3339_sql
from postroom.tracing import current_traceparent

NOTIFY_CHANNEL = "postroom_outbox"

# The largest event the writer takes: Kafka's default record limit (about 1 MB) less room for
# key and headers. The relay parks a row Kafka refuses; Debezium cannot (its task stops), so
# an event that could never be published is refused here, before anything is committed.
MAX_EVENT_BYTES = 1_000_000


class EventTooLarge(ValueError):
    """An event's JSON is larger than MAX_EVENT_BYTES: Kafka would refuse it."""


def _checked(payload: str) -> str:
    size = len(payload.encode())
    if size > MAX_EVENT_BYTES:
        raise EventTooLarge(f"an event of {size} bytes (at most {MAX_EVENT_BYTES})")
    return payload


def shard_of(aggregate_id: str, shards: int) -> int:
    """The relay shard of an aggregate: stable across processes and releases (CRC-32)."""
    return zlib.crc32(aggregate_id.encode()) % shards


# An event's `created_at` and its `ce_time` header are one clock reading, `c.at` (a statement's
# rows share it).
_CE_TIME = rfc3339_sql("c.at")
_CE_TIME_TEXT = _CE_TIME.replace(":", "\\:")  # in sa.text(), a colon starts a parameter

# One event: the row, and a NOTIFY raised in the same statement (never without the row).
_INSERT_SQL = """
WITH inserted AS (
    INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers,
                        shard, ce_source, traceparent, created_at, ce_time)
    SELECT $1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, c.at, {ce_time}
    FROM (SELECT clock_timestamp() AS at) AS c
    RETURNING id
)
SELECT id {notify} FROM inserted
"""
_INSERT = {
    True: _INSERT_SQL.format(
        notify=f", pg_notify('{NOTIFY_CHANNEL}', '') AS notified", ce_time=_CE_TIME
    ),
    False: _INSERT_SQL.format(notify="", ce_time=_CE_TIME),
}

# A change and its events in one statement: `changed` is the caller's data-modifying statement
# (with RETURNING); the events are inserted, in the order given, only if it returned a row, and
# the NOTIFY raised only then. One statement is one round trip, and atomic on its own.
_WITH_CHANGE_SQL = """
WITH changed AS ({change}),
events AS (
    INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers,
                        shard, ce_source, traceparent, created_at, ce_time)
    SELECT v.event_id, v.aggregate_type, v.aggregate_id, v.event_type, v.payload::jsonb,
           v.headers::jsonb, v.shard, v.ce_source, v.traceparent, c.at, {ce_time}
    FROM (SELECT FROM changed LIMIT 1) AS once, (SELECT clock_timestamp() AS at) AS c,
         unnest(${n}::uuid[], ${n1}::text[], ${n2}::text[], ${n3}::text[], ${n4}::text[],
                ${n5}::text[], ${n6}::int[], ${n7}::text[], ${n8}::text[])
             WITH ORDINALITY
             AS v(event_id, aggregate_type, aggregate_id, event_type, payload, headers, shard,
                  ce_source, traceparent, n)
    ORDER BY v.n
    RETURNING id
)
SELECT changed.* {notify}
FROM changed CROSS JOIN (SELECT count(*) AS added FROM events) AS added
"""


@functools.cache  # a handful of statements, formatted once instead of per request
def _with_change_sql(change: str, args: int, *, notify: bool) -> str:
    n = args + 1
    return _WITH_CHANGE_SQL.format(
        change=change,
        n=n,
        n1=n + 1,
        n2=n + 2,
        n3=n + 3,
        n4=n + 4,
        n5=n + 5,
        n6=n + 6,
        n7=n + 7,
        n8=n + 8,
        notify=f", pg_notify('{NOTIFY_CHANNEL}', '') AS notified" if notify else "",
        ce_time=_CE_TIME,
    )


# Many rows in one statement: WITH ORDINALITY keeps the identity values in the order given.
_INSERT_MANY_SQL = """
    WITH inserted AS (
        INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers,
                            shard, ce_source, traceparent, created_at, ce_time)
        SELECT v.event_id, v.aggregate_type, v.aggregate_id, v.event_type,
               CAST(v.payload AS jsonb), CAST(v.headers AS jsonb), v.shard, v.ce_source,
               v.traceparent, c.at, {ce_time}
        FROM (SELECT clock_timestamp() AS at) AS c,
             unnest(CAST(:event_ids AS uuid[]), CAST(:aggregate_types AS text[]),
                    CAST(:aggregate_ids AS text[]), CAST(:event_types AS text[]),
                    CAST(:payloads AS text[]), CAST(:headers AS text[]),
                    CAST(:shards AS int[]), CAST(:ce_sources AS text[]),
                    CAST(:traceparents AS text[]))
             WITH ORDINALITY
             AS v(event_id, aggregate_type, aggregate_id, event_type, payload, headers, shard,
                  ce_source, traceparent, n)
        ORDER BY v.n
        RETURNING id
    )
    SELECT count(*) {notify} FROM inserted
"""
_INSERT_MANY = {
    True: sa.text(
        _INSERT_MANY_SQL.format(
            notify=f", pg_notify('{NOTIFY_CHANNEL}', '') AS notified", ce_time=_CE_TIME_TEXT
        )
    ),
    False: sa.text(_INSERT_MANY_SQL.format(notify="", ce_time=_CE_TIME_TEXT)),
}


def _headers(event: Event) -> dict[str, str]:
    headers = event.headers()
    traceparent = current_traceparent()
    if traceparent and "traceparent" not in headers:
        headers["traceparent"] = traceparent  # the request's trace, continued downstream
    return headers


def _row(event: Event, shards: int) -> dict[str, Any]:
    headers = _headers(event)
    return {
        "event_id": event.event_id,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "event_type": event.event_type,
        "payload": _checked(event.data.model_dump_json()),
        "headers": headers,
        "shard": shard_of(event.aggregate_id, shards),
        "ce_source": headers.get("ce_source"),
        "traceparent": headers.get("traceparent"),
    }


def _values(event: Event, shards: int) -> tuple[Any, ...]:
    """The insert's parameters, the payload serialised once, by pydantic, straight to JSON
    (a third of the time of a dict then `json.dumps`)."""
    aggregate_id = event.aggregate_id
    headers = _headers(event)
    return (
        event.event_id,
        event.aggregate_type,
        aggregate_id,
        event.event_type,
        _checked(event.data.model_dump_json()),
        json.dumps(headers),
        shard_of(aggregate_id, shards),
        headers.get("ce_source"),
        headers.get("traceparent"),
    )


async def add_event(
    conn: Connection | AsyncConnection, event: Event, *, shards: int, notify: bool = True
) -> int:
    """Add `event` to the transaction open on `conn` (an asyncpg connection, or a SQLAlchemy
    one); return its outbox id. Without `notify` the relays find the row at their next poll
    (OUTBOX_NOTIFY=false)."""
    values = _values(event, shards)
    if isinstance(conn, AsyncConnection):
        if not conn.in_transaction():
            raise RuntimeError("add_event needs the caller's open transaction")
        result = await conn.exec_driver_sql(_INSERT[notify], values)
        outbox_id: int = result.scalar_one()
        return outbox_id
    if not conn.is_in_transaction():
        raise RuntimeError("add_event needs the caller's open transaction")
    row = await conn.fetchrow(_INSERT[notify], *values)
    assert row is not None
    return int(row["id"])


@dataclass(frozen=True, slots=True)
class OutboxWriter:
    """The outbox as the use cases see it: where events go, configured once per process."""

    shards: int
    notify: bool = True

    async def add(self, conn: Connection | AsyncConnection, event: Event) -> int:
        return await add_event(conn, event, shards=self.shards, notify=self.notify)

    async def add_with(
        self, conn: Connection, change: str, args: Sequence[Any], batch: Sequence[Event]
    ) -> asyncpg.Record | None:
        """Run `change`, a data-modifying statement returning one row at most, whose
        parameters are `args` ($1 to $n), and add the events of `batch` (in order) in the same
        statement if it returned a row. Return that row; None if it returned none: then
        nothing was written. The statement is atomic on its own, so it needs no transaction
        around it: a change that writes one row takes one round trip with its events instead
        of four (BEGIN, the change, the events, COMMIT)."""
        sql = _with_change_sql(change, len(args), notify=self.notify)
        columns = [list(c) for c in zip(*(_values(e, self.shards) for e in batch), strict=True)]
        return await conn.fetchrow(sql, *args, *columns)

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
                "payloads": [row["payload"] for row in rows],
                "headers": [json.dumps(row["headers"]) for row in rows],
                "shards": [row["shard"] for row in rows],
                "ce_sources": [row["ce_source"] for row in rows],
                "traceparents": [row["traceparent"] for row in rows],
            },
        )
