"""The relay loop: claim a cycle of rows from owned shards, send them, await every
acknowledgement, mark them, repeat; sleep until NOTIFY (or the fallback poll) says there is
more. The claim rule lives in `claims`, shard ownership in `shards`.

Ordering within a shard survives failures because:
- a cycle's rows are all acknowledged (or failed) before the next cycle is read, and the cycle
  is small enough (RELAY_BATCH_BYTES) that a partition's records travel in one request;
- after a transient failure at row k, later rows of that shard are neither sent in this cycle
  (when the failure is known at send time) nor marked, and the next cycle starts again at k.
Repeats are possible (at-least-once); consumers drop them by `ce_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiokafka.errors import KafkaError

from outbox_relay import claims
from outbox_relay.claims import OutboxRow
from outbox_relay.metrics import RelayMetrics
from outbox_relay.publisher import Deferred, Publisher, describe, is_permanent
from outbox_relay.settings import RelaySettings
from outbox_relay.shards import ShardOwnership, application_name
from postroom.backoff import Backoff
from postroom.outbox import NOTIFY_CHANNEL
from postroom.settings import plain_url

log = structlog.get_logger("postroom.relay")

_DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_GAUGE_INTERVAL = 5.0


@dataclass
class CycleOutcome:
    sent: int = 0
    published: int = 0
    parked: int = 0
    failed: list[tuple[OutboxRow, BaseException]] = field(default_factory=list)
    more_waiting: bool = False


def record_size(row: OutboxRow) -> int:
    """About what a row weighs in a producer batch: value, key and CloudEvents headers."""
    return len(row.payload) + len(row.aggregate_id) + len(row.headers) + 200


def trim_to_budget(rows: Sequence[OutboxRow], budget: int) -> tuple[list[OutboxRow], bool]:
    """Keep a prefix of every shard's rows whose values fit `budget` bytes in total, taking
    rows round-robin across shards so one busy shard does not starve the others. The first
    row is always kept, however large. Returns the rows (in input order) and whether any
    were left out."""
    by_shard: dict[int, list[OutboxRow]] = {}
    for row in rows:
        by_shard.setdefault(row.shard, []).append(row)
    kept = dict.fromkeys(by_shard, 0)
    used = 0
    depth = 0
    trimmed = False
    while not trimmed and any(depth < len(shard_rows) for shard_rows in by_shard.values()):
        for shard, shard_rows in by_shard.items():
            if depth >= len(shard_rows):
                continue
            size = record_size(shard_rows[depth])
            if used and used + size > budget:
                trimmed = True
                break
            used += size
            kept[shard] += 1
        depth += 1
    return [row for shard, rs in by_shard.items() for row in rs[: kept[shard]]], trimmed


class Relay:
    def __init__(self, settings: RelaySettings, *, metrics: RelayMetrics | None = None) -> None:
        self.settings = settings
        self.relay_id = settings.relay_id or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = metrics or RelayMetrics()
        self.ownership = ShardOwnership(relay_id=self.relay_id, shards=settings.relay_shards)
        self.publisher = Publisher(settings, client_id=f"postroom-relay-{self.relay_id}")
        self._conn: asyncpg.Connection | None = None
        self._publisher_started = False
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._next_rebalance = 0.0
        self._last_cycle = -math.inf  # when the last cycle that was not full started
        self._next_gauges = 0.0
        self._next_prune = 0.0
        # Shards at or past RELAY_SHARDS that hold unpublished rows (written by a process with
        # a larger RELAY_SHARDS): each is covered by the owner of shard (s mod RELAY_SHARDS).
        self._strays: frozenset[int] = frozenset()
        self._log = log.bind(relay=self.relay_id)
        # When a cycle last failed at Kafka, until one gets records through (None: fine).
        self.kafka_failing_since: float | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Connected to PostgreSQL, the producer started, and Kafka took the last cycle's
        records (a cycle that failed at Kafka makes the relay not ready until one succeeds)."""
        return (
            self._conn is not None
            and not self._conn.is_closed()
            and self._publisher_started
            and self.kafka_failing_since is None
        )

    def _kafka_failed(self) -> None:
        if self.kafka_failing_since is None:
            self.kafka_failing_since = time.monotonic()

    def stop(self) -> None:
        """Finish the cycle in flight, mark it, release the shards, then return from run()."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        backoff = Backoff(self.settings.relay_backoff_initial, self.settings.relay_backoff_max)
        self._log.info("relay starting", shards=self.settings.relay_shards)
        try:
            while not self._stopping.is_set():
                try:
                    await self._connect()
                    await self._maintain()
                    outcome = await self._cycle()
                except _DATABASE_ERRORS as exc:
                    self.metrics.cycle_failures.labels("database").inc()
                    self._log.warning("database unavailable", error=describe(exc))
                    await self._disconnect()
                    await self._pause(backoff.next_delay())
                    continue
                except KafkaError as exc:
                    self._kafka_failed()
                    self.metrics.cycle_failures.labels("kafka").inc()
                    self._log.warning("kafka unavailable", error=describe(exc))
                    await self._restart_publisher()
                    await self._pause(backoff.next_delay())
                    continue
                if outcome.failed:
                    self._kafka_failed()
                    self.metrics.cycle_failures.labels("send").inc()
                    if outcome.published == 0:
                        # Nothing got through: the producer may be wedged on a dead connection.
                        await self._restart_publisher()
                    await self._pause(backoff.next_delay())
                    continue
                backoff.reset()
                if outcome.published:
                    self.kafka_failing_since = None
                if not outcome.more_waiting:
                    await self._wait_for_work()
        finally:
            await self._shutdown()

    async def _connect(self) -> None:
        if self._conn is None or self._conn.is_closed():
            self.ownership.forget()
            self.metrics.shards_owned.set(0)
            conn = await asyncpg.connect(
                plain_url(self.settings.database_url),
                timeout=self.settings.database_connect_timeout,
                server_settings={
                    "application_name": application_name(self.relay_id),
                    "statement_timeout": "30s",
                    # A "published" mark lost in a database crash only means the rows are
                    # sent again (at-least-once), so the relay need not wait for the WAL
                    # flush of each mark.
                    "synchronous_commit": "off",
                    # This connection holds the shard locks. If this host vanishes without
                    # closing it, the server notices within about a minute and lets the
                    # locks go, instead of keeping a half-open connection for hours.
                    "tcp_keepalives_idle": "30",
                    "tcp_keepalives_interval": "10",
                    "tcp_keepalives_count": "3",
                    "tcp_user_timeout": "60000",
                },
            )
            if self.settings.outbox_notify:
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            conn.add_termination_listener(self._on_connection_lost)
            self._conn = conn
            self._next_rebalance = 0.0
            self._log.info("connected to the database")
        if not self._publisher_started:
            await self.publisher.start()
            self._publisher_started = True
            self._log.info("connected to kafka", servers=self.settings.kafka_bootstrap_servers)

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    def _on_connection_lost(self, *_: Any) -> None:
        self._wake.set()

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self.ownership.forget()
        self.metrics.shards_owned.set(0)
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)
            if not conn.is_closed():
                conn.terminate()

    async def _restart_publisher(self) -> None:
        self._publisher_started = False
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publisher.stop(), timeout=10)
        self.publisher.forget_topics()

    async def _shutdown(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(*_DATABASE_ERRORS):
                await self.ownership.release_all(self._conn)
        await self._disconnect()
        if self._publisher_started:
            await self._restart_publisher()
        self._log.info("relay stopped")

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _wait_for_work(self) -> None:
        now = time.monotonic()
        timeout = min(self.settings.relay_poll_interval, max(0.0, self._next_rebalance - now))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    # -- periodic duties ----------------------------------------------------------------------

    async def _maintain(self) -> None:
        conn = self._conn
        assert conn is not None
        now = time.monotonic()
        if now >= self._next_rebalance:
            taken, given = await self.ownership.rebalance(conn)
            if taken or given:
                self._log.info(
                    "shards rebalanced",
                    taken=sorted(taken),
                    given=sorted(given),
                    owned=sorted(self.ownership.owned),
                )
                self._wake.set()
            self.metrics.shards_owned.set(len(self.ownership.owned))
            self._next_rebalance = now + self.settings.relay_rebalance_interval
        if now >= self._next_gauges:
            await self._find_strays(conn)
            await self._refresh_gauges(conn)
            self._next_gauges = now + _GAUGE_INTERVAL
        if now >= self._next_prune and self.settings.outbox_retention > 0 and self.ownership.owned:
            pruned = await claims.prune(
                conn,
                shards=self._covered(),
                older_than=self.settings.outbox_retention,
            )
            if pruned:
                self._log.info("pruned published rows", rows=pruned)
            self._next_prune = now + self.settings.outbox_prune_interval

    def _covered(self) -> list[int]:
        """The shards this relay publishes: those it owns, and the stray shards that fall to
        them (a stray shard s goes with shard s mod RELAY_SHARDS, under that shard's lock)."""
        shards = self.settings.relay_shards
        owned = self.ownership.owned
        return sorted(owned | {s for s in self._strays if s % shards in owned})

    async def _find_strays(self, conn: asyncpg.Connection) -> None:
        shards = self.settings.relay_shards
        rows = await conn.fetch(
            """
            SELECT DISTINCT shard FROM outbox
            WHERE shard >= $1 AND published_at IS NULL AND parked_at IS NULL
            """,
            shards,
        )
        strays = frozenset(int(row["shard"]) for row in rows)
        if strays - self._strays:
            self._log.error(
                "outbox rows in shards beyond RELAY_SHARDS; publishing them with the shard "
                "they fall to. Set RELAY_SHARDS alike in every process",
                relay_shards=shards,
                stray_shards=sorted(strays),
                writers_shards_at_least=max(strays) + 1,
            )
        self._strays = strays
        self.metrics.stray_shards.set(len(strays))

    async def _refresh_gauges(self, conn: asyncpg.Connection) -> None:
        owned = self._covered()
        backlog = await claims.pending_by_shard(conn, shards=owned)
        self.metrics.pending.clear()
        for shard in owned:
            self.metrics.pending.labels(str(shard)).set(
                backlog[shard].pending if shard in backlog else 0
            )
        ages = [b.oldest_age for b in backlog.values()]
        self.metrics.oldest_pending_age.set(max(ages, default=0.0))

    # -- one cycle ------------------------------------------------------------------------------

    async def _cycle(self) -> CycleOutcome:
        conn = self._conn
        assert conn is not None
        owned = self._covered()
        outcome = CycleOutcome()
        if not owned:
            return outcome
        await self._gather()
        self._wake.clear()  # notifications from here on mean "look again after this cycle"
        started = time.perf_counter()
        per_shard = math.ceil(self.settings.relay_batch_size / len(owned))
        claimed = await claims.claim(conn, shards=owned, per_shard=per_shard)
        if not claimed:
            self._last_cycle = -math.inf  # nothing flows: the next row is claimed at once
            return outcome
        counts: dict[int, int] = {}
        for row in claimed:
            counts[row.shard] = counts.get(row.shard, 0) + 1
        rows, trimmed = trim_to_budget(claimed, self.settings.relay_batch_bytes)
        outcome.more_waiting = trimmed or any(n >= per_shard for n in counts.values())

        results = await self._send(rows)
        published_ids: list[int] = []
        to_park: list[tuple[OutboxRow, BaseException]] = []
        stopped_shards: set[int] = set()
        for row, result in zip(rows, results, strict=True):
            if row.shard in stopped_shards:
                continue
            if result is None:
                published_ids.append(row.id)
            elif is_permanent(result):
                to_park.append((row, result))
            elif isinstance(result, Deferred):
                outcome.more_waiting = True
                stopped_shards.add(row.shard)
            else:
                outcome.failed.append((row, result))
                stopped_shards.add(row.shard)

        latencies = await claims.mark_published(conn, published_ids)
        for row, error in to_park:
            await claims.park(conn, row.id, describe(error))
            self._log.error(
                "row parked", outbox_id=row.id, event_type=row.event_type, error=describe(error)
            )
        for row, error in outcome.failed:
            await claims.record_failure(conn, row.id, describe(error))
            self._log.warning(
                "send failed; will retry",
                outbox_id=row.id,
                shard=row.shard,
                error=describe(error),
            )

        if outcome.more_waiting:
            self._last_cycle = -math.inf  # a backlog: the next cycle goes at once
        outcome.sent = len(rows)
        outcome.published = len(published_ids)
        outcome.parked = len(to_park)
        self.metrics.published.inc(outcome.published)
        self.metrics.parked.inc(outcome.parked)
        self.metrics.send_failures.inc(len(outcome.failed))
        self.metrics.batch_size.observe(outcome.sent)
        self.metrics.batch_duration.observe(time.perf_counter() - started)
        for latency in latencies:
            self.metrics.latency.observe(latency)
        return outcome

    async def _gather(self) -> None:
        """Let the rows of the next few milliseconds join this cycle's: under a steady stream
        a cycle starts RELAY_GATHER after the last one started, not at every notification."""
        now = time.monotonic()
        wait = self._last_cycle + self.settings.relay_gather - now
        if wait > 0:
            await self._pause(wait)
            now = time.monotonic()
        self._last_cycle = now

    async def _send(self, rows: list[OutboxRow]) -> list[BaseException | None]:
        await self.publisher.ensure_topics(
            sorted({self.settings.topic(row.aggregate_type) for row in rows})
        )
        return await self.publisher.publish(rows)
