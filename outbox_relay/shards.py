"""Shard ownership through PostgreSQL advisory locks.

One relay owns a shard at a time: it holds the session-level advisory lock
(`LOCK_CLASS`, shard) on its own connection, the same connection it reads and marks rows
with. If that connection dies, PostgreSQL releases the locks and the relay can no longer read
or mark anything, so two relays never publish one shard for long. Relays share the shards:
each aims at ceil(shards / live relays), counting live relays by their lock connections'
`application_name`, gives up extras so a newcomer gets some, and picks up shards whose owner
died at its next rebalance.
"""

from __future__ import annotations

import math
import zlib

import asyncpg

LOCK_CLASS = 0x706F7374  # "post": the advisory lock namespace of relay shards
APPLICATION_PREFIX = "postroom-relay:"


def application_name(relay_id: str) -> str:
    return f"{APPLICATION_PREFIX}{relay_id}"[:63]


async def live_relays(conn: asyncpg.Connection) -> int:
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE $1",
        APPLICATION_PREFIX + "%",
    )
    return max(1, int(count))


def fair_share(shards: int, relays: int) -> int:
    return math.ceil(shards / max(1, relays))


class ShardOwnership:
    """The shards this relay holds, and the rebalancing that changes them."""

    def __init__(self, *, relay_id: str, shards: int) -> None:
        self.relay_id = relay_id
        self.shards = shards
        self.owned: set[int] = set()
        # Start probing at a relay-specific shard so newcomers do not all race for shard 0.
        self._offset = zlib.crc32(relay_id.encode()) % shards

    def forget(self) -> None:
        """The lock connection is gone, and with it every lock."""
        self.owned.clear()

    async def rebalance(self, conn: asyncpg.Connection) -> tuple[set[int], set[int]]:
        """Take free shards up to the fair share, give up any beyond it; return (taken, given)."""
        target = fair_share(self.shards, await live_relays(conn))
        given: set[int] = set()
        while len(self.owned) > target:
            shard = max(self.owned)
            await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, shard)
            self.owned.discard(shard)
            given.add(shard)
        taken: set[int] = set()
        for step in range(self.shards):
            if len(self.owned) >= target:
                break
            shard = (self._offset + step) % self.shards
            if shard in self.owned or shard in given:
                continue
            if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, shard):
                self.owned.add(shard)
                taken.add(shard)
        return taken, given

    async def release_all(self, conn: asyncpg.Connection) -> None:
        for shard in sorted(self.owned):
            await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, shard)
        self.owned.clear()


async def owners(conn: asyncpg.Connection) -> dict[int, str]:
    """Which relay holds each shard's lock right now (for `postroom outbox status`)."""
    rows = await conn.fetch(
        """
        SELECT l.objid::int AS shard, a.application_name
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.classid::bigint = $1 AND l.granted
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        LOCK_CLASS,
    )
    return {row["shard"]: row["application_name"].removeprefix(APPLICATION_PREFIX) for row in rows}
