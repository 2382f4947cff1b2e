"""What a Debezium publisher's replication slot holds back, for the api's /metrics
(OUTBOX_PUBLISHER=debezium). A slot keeps every byte of WAL its connector has not confirmed:
a connector that is down makes the database's disk fill (docs/debezium.md)."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog
from prometheus_client import CollectorRegistry, Gauge

log = structlog.get_logger("postroom.api")

_SLOTS = """
SELECT slot_name, active,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8 AS lag
FROM pg_replication_slots
WHERE database = current_database() AND slot_type = 'logical'
"""


class SlotReport:
    """Reads the database's logical slots every `interval` seconds into two gauges (defined
    whatever the publisher, so the alert rules always name exported series)."""

    def __init__(self, registry: CollectorRegistry, *, interval: float):
        self.interval = interval
        self._stopping = asyncio.Event()
        self.lag = Gauge(
            "postroom_outbox_slot_lag_bytes",
            "WAL a logical replication slot of this database holds back: written since its "
            "consumer (Debezium) last confirmed.",
            ["slot"],
            registry=registry,
        )
        self.active = Gauge(
            "postroom_outbox_slot_active",
            "1 while a consumer (Debezium) streams from the slot, 0 while none does.",
            ["slot"],
            registry=registry,
        )

    def stop(self) -> None:
        self._stopping.set()

    async def read(self, pool: asyncpg.Pool) -> None:
        rows = await pool.fetch(_SLOTS)
        for row in rows:
            self.lag.labels(row["slot_name"]).set(row["lag"] or 0.0)
            self.active.labels(row["slot_name"]).set(1.0 if row["active"] else 0.0)

    async def run(self, pool: asyncpg.Pool) -> None:
        while not self._stopping.is_set():
            try:
                await self.read(pool)
            except Exception as exc:  # the database may be away: next time
                log.warning("replication slots not read", error=f"{type(exc).__name__}"[:100])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
