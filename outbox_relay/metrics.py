"""The relay's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
)

from postroom.metrics import process_registry


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = process_registry()
        r = self.registry
        self.pending = Gauge(
            "postroom_relay_pending_rows",
            "Unpublished, unparked rows in owned shards.",
            ["shard"],
            registry=r,
        )
        self.stray_shards = Gauge(
            "postroom_relay_stray_shards",
            "Shards at or past RELAY_SHARDS holding unpublished rows (a writer with another "
            "RELAY_SHARDS); the relays cover them, but the setting should be the same everywhere.",
            registry=r,
        )
        self.oldest_pending_age = Gauge(
            "postroom_relay_oldest_pending_age_seconds",
            "Age of the oldest unpublished row in owned shards.",
            registry=r,
        )
        self.published = Counter(
            "postroom_relay_published", "Rows published to Kafka and marked.", registry=r
        )
        self.parked = Counter(
            "postroom_relay_parked", "Rows Kafka refused for good, parked.", registry=r
        )
        self.send_failures = Counter(
            "postroom_relay_send_failures", "Transient send failures (retried).", registry=r
        )
        self.cycle_failures = Counter(
            "postroom_relay_cycle_failures",
            "Cycles that ended in an error and a backoff.",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "postroom_relay_batch_rows",
            "Rows sent per cycle.",
            registry=r,
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
        )
        self.batch_duration = Histogram(
            "postroom_relay_batch_duration_seconds",
            "Claim, send, acknowledge and mark.",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.latency = Histogram(
            "postroom_relay_commit_to_ack_seconds",
            "From the row's insert to Kafka's acknowledgement (marked).",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.shards_owned = Gauge(
            "postroom_relay_shards_owned", "Shards this relay holds.", registry=r
        )
