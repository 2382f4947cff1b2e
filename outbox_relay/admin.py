"""The operator's outbox verbs: `postroom outbox status | recent | retry-parked | prune`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from outbox_relay import claims
from outbox_relay.shards import owners
from postroom.outbox import NOTIFY_CHANNEL
from postroom.settings import CommonSettings, plain_url


@dataclass(frozen=True)
class ShardStatus:
    shard: int
    pending: int
    oldest_pending_age: float | None
    owner: str | None


@dataclass(frozen=True)
class OutboxStatus:
    shards: list[ShardStatus]
    parked: int
    published: int

    @property
    def pending(self) -> int:
        return sum(s.pending for s in self.shards)


async def _connect(settings: CommonSettings) -> asyncpg.Connection:
    return await asyncpg.connect(
        plain_url(settings.database_url),
        timeout=settings.database_connect_timeout,
        server_settings={"application_name": "postroom-cli"},
    )


async def status(settings: CommonSettings) -> OutboxStatus:
    conn = await _connect(settings)
    try:
        backlog = await claims.pending_by_shard(conn, shards=None)
        parked = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL"
        )
        published = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"
        )
        held = await owners(conn)
    finally:
        await conn.close()
    count = max([settings.relay_shards, *(s + 1 for s in backlog), *(s + 1 for s in held)])
    shards = [
        ShardStatus(
            shard=shard,
            pending=backlog[shard].pending if shard in backlog else 0,
            oldest_pending_age=backlog[shard].oldest_age if shard in backlog else None,
            owner=held.get(shard),
        )
        for shard in range(count)
    ]
    return OutboxStatus(shards=shards, parked=int(parked), published=int(published))


@dataclass(frozen=True)
class RecentRow:
    id: int
    created_at: datetime
    state: str
    shard: int
    event_type: str
    aggregate_id: str
    payload: str
    last_error: str | None


async def recent(
    settings: CommonSettings, *, limit: int, parked_only: bool = False
) -> list[RecentRow]:
    conn = await _connect(settings)
    try:
        rows = await conn.fetch(
            """
            SELECT id, created_at, shard, event_type, aggregate_id, payload::text AS payload,
                   last_error,
                   CASE WHEN published_at IS NOT NULL THEN 'published'
                        WHEN parked_at IS NOT NULL THEN 'parked' ELSE 'pending' END AS state
            FROM outbox
            WHERE NOT $2 OR (parked_at IS NOT NULL AND published_at IS NULL)
            ORDER BY id DESC LIMIT $1
            """,
            limit,
            parked_only,
        )
    finally:
        await conn.close()
    return [RecentRow(**dict(row)) for row in rows]


async def retry_parked(settings: CommonSettings, *, ids: Sequence[int] = ()) -> list[int]:
    """Put parked rows back in line (all, or those in `ids`) and wake the relays."""
    conn = await _connect(settings)
    try:
        async with conn.transaction():
            rows = await conn.fetch(
                """
                UPDATE outbox SET parked_at = NULL
                WHERE parked_at IS NOT NULL AND published_at IS NULL
                  AND (cardinality($1::bigint[]) = 0 OR id = ANY($1::bigint[]))
                RETURNING id
                """,
                list(ids),
            )
            if rows:
                await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    finally:
        await conn.close()
    return sorted(row["id"] for row in rows)


async def prune(settings: CommonSettings, *, older_than: float) -> int:
    conn = await _connect(settings)
    try:
        return await claims.prune(conn, shards=None, older_than=older_than)
    finally:
        await conn.close()
