"""The relay's claim rule, in SQL (invariant 3).

- A relay reads only rows of shards it owns, unpublished and unparked, in id order per shard.
  It never keeps a cursor: a row that committed late (its id below rows already published) is
  still unpublished, so the next read finds it. Nothing is skipped because it was invisible.
- A row is marked published only after Kafka acknowledged it, in one statement per cycle, and
  no transaction is open while the relay waits on Kafka: every statement here is its own
  implicit transaction.
- After a transient failure in a shard, only the rows before the failed one are marked; the
  next cycle starts again at the failed row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# Per owned shard, the ids of the oldest unpublished rows, by an index-only scan of the partial
# (shard, id) index; then those rows. The range on shard (rather than `shard = s.shard`) keeps
# (shard, id) an ordering only that index provides: with an equality the planner may walk the
# primary key instead and filter, which reads every already-published row of a large backlog.
_CLAIM = """
SELECT o.id, o.event_id, o.aggregate_type, o.aggregate_id, o.event_type,
       o.payload::text AS payload, o.headers::text AS headers, o.shard, o.created_at,
       o.ce_specversion, o.ce_source, o.ce_time, o.content_type, o.traceparent
FROM outbox AS o
WHERE o.id IN (
    SELECT next.id
    FROM unnest($1::int[]) AS s(shard)
    CROSS JOIN LATERAL (
        SELECT id FROM outbox
        WHERE shard BETWEEN s.shard AND s.shard
          AND published_at IS NULL AND parked_at IS NULL
        ORDER BY shard, id
        LIMIT $2
    ) AS next
)
ORDER BY o.shard, o.id
"""

_MARK_PUBLISHED = """
UPDATE outbox SET published_at = clock_timestamp(), attempts = attempts + 1
WHERE id = ANY($1::bigint[]) AND published_at IS NULL
RETURNING extract(epoch FROM published_at - created_at) AS latency
"""

# Unpublished, unparked rows per shard and the age of the oldest, in seconds.
_PENDING = """
SELECT shard, count(*) AS pending,
       extract(epoch FROM clock_timestamp() - min(created_at)) AS oldest
FROM outbox
WHERE published_at IS NULL AND parked_at IS NULL
  AND ($1::int[] IS NULL OR shard = ANY($1::int[]))
GROUP BY shard
"""

_RECORD_FAILURE = """
UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1
"""

_PARK = """
UPDATE outbox SET parked_at = clock_timestamp(), attempts = attempts + 1, last_error = $2
WHERE id = $1
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    event_id: str
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: str
    headers: str
    shard: int
    created_at: datetime
    # The header columns (migration 0013); None on rows written before it, whose headers
    # come from `headers` and `created_at` instead.
    ce_specversion: str = "1.0"
    ce_source: str | None = None
    ce_time: str | None = None
    content_type: str = "application/json"
    traceparent: str | None = None


async def claim(
    conn: asyncpg.Connection, *, shards: Sequence[int], per_shard: int
) -> list[OutboxRow]:
    """The next unpublished rows of `shards`, at most `per_shard` each, in (shard, id) order."""
    records = await conn.fetch(_CLAIM, list(shards), per_shard)
    return [
        OutboxRow(
            id=r["id"],
            event_id=str(r["event_id"]),
            aggregate_type=r["aggregate_type"],
            aggregate_id=r["aggregate_id"],
            event_type=r["event_type"],
            payload=r["payload"],
            headers=r["headers"],
            shard=r["shard"],
            created_at=r["created_at"],
            ce_specversion=r["ce_specversion"],
            ce_source=r["ce_source"],
            ce_time=r["ce_time"],
            content_type=r["content_type"],
            traceparent=r["traceparent"],
        )
        for r in records
    ]


async def mark_published(conn: asyncpg.Connection, ids: Sequence[int]) -> list[float]:
    """Mark rows published; return each one's commit-to-acknowledgement latency in seconds."""
    if not ids:
        return []
    rows = await conn.fetch(_MARK_PUBLISHED, list(ids))
    return [float(row["latency"]) for row in rows]


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    oldest_age: float  # seconds


async def pending_by_shard(
    conn: asyncpg.Connection, *, shards: Sequence[int] | None
) -> dict[int, Backlog]:
    """The backlog of each of `shards` (all shards if None) that has one."""
    rows = await conn.fetch(_PENDING, None if shards is None else list(shards))
    return {row["shard"]: Backlog(row["pending"], float(row["oldest"])) for row in rows}


async def record_failure(conn: asyncpg.Connection, row_id: int, error: str) -> None:
    await conn.execute(_RECORD_FAILURE, row_id, error[:2000])


async def park(conn: asyncpg.Connection, row_id: int, error: str) -> None:
    await conn.execute(_PARK, row_id, error[:2000])


async def prune(
    conn: asyncpg.Connection,
    *,
    shards: Sequence[int] | None,
    older_than: float,
    batch: int = 1000,
) -> int:
    """Delete published rows created more than `older_than` seconds ago, `batch` at a time,
    so no statement holds many row locks; return how many went. A BRIN index on
    `created_at` finds the old end of the table without a per-row index to maintain."""
    total = 0
    while True:
        status = await conn.execute(
            """
            DELETE FROM outbox WHERE id IN (
                SELECT id FROM outbox
                WHERE created_at < clock_timestamp() - make_interval(secs => $2)
                  AND published_at IS NOT NULL
                  AND ($1::int[] IS NULL OR shard = ANY($1::int[]))
                LIMIT $3
            )
            """,
            None if shards is None else list(shards),
            older_than,
            batch,
        )
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch:
            return total
