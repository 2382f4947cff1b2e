"""Kafka side of the relay: one aiokafka producer, topics, CloudEvents records, and which
errors are worth retrying."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable
from datetime import UTC

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.structs import RecordMetadata

from outbox_relay.claims import OutboxRow
from postroom.settings import RelaySettings

# Kafka will refuse these records however often they are sent: park them (invariant 4).
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
)
KNOWN_AGGREGATES = ("user", "email")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

Headers = list[tuple[str, bytes]]


def is_permanent(error: BaseException) -> bool:
    return isinstance(error, PERMANENT_ERRORS)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


def cloudevent_headers(row: OutboxRow) -> Headers:
    """CloudEvents 1.0 binary-mode headers; `ce_id` is the row's event id, stable on re-sends."""
    stored: dict[str, str] = json.loads(row.headers) if row.headers else {}
    headers: Headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", row.event_id.encode()),
        ("ce_source", stored.get("ce_source", "/postroom").encode()),
        ("ce_type", row.event_type.encode()),
        ("ce_time", row.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z").encode()),
        ("ce_subject", row.aggregate_id.encode()),
        ("content-type", b"application/json"),
    ]
    if "traceparent" in stored:
        headers.append(("traceparent", stored["traceparent"].encode()))
    return headers


class Publisher:
    """Sends outbox rows; recreated by the relay after errors that leave it unusable."""

    def __init__(self, settings: RelaySettings, *, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._topics: set[str] = set()

    async def start(self) -> None:
        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=s.kafka_enable_idempotence,
            linger_ms=0,
            # A cycle's records for one partition fit one batch (see RELAY_BATCH_BYTES).
            max_batch_size=max(s.relay_batch_bytes * 2, 1024 * 1024),
            max_request_size=s.relay_max_record_bytes,
            request_timeout_ms=int(s.relay_send_timeout * 1000),
            retry_backoff_ms=100,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        await self.ensure_topics([s.topic(aggregate) for aggregate in KNOWN_AGGREGATES])

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def ensure_topics(self, topics: list[str]) -> None:
        """Create missing topics with the configured partition count."""
        missing = [topic for topic in topics if topic not in self._topics]
        if not missing:
            return
        s = self.settings
        admin = AIOKafkaAdminClient(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=f"{self.client_id}-admin",
            request_timeout_ms=int(s.relay_send_timeout * 1000),
        )
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            wanted = [t for t in missing if t not in existing]
            if wanted:
                # Per-topic errors come back in the answer; "already exists" means another
                # relay was quicker, and anything else shows up as a failed send, retried.
                await admin.create_topics(
                    [
                        NewTopic(t, s.kafka_topic_partitions, s.kafka_replication_factor)
                        for t in wanted
                    ]
                )
        finally:
            await admin.close()
        self._topics.update(missing)

    def forget_topics(self) -> None:
        """Check the topics again before the next send (one may have been deleted)."""
        self._topics.clear()

    def topic_of(self, row: OutboxRow) -> str:
        """The row's topic; InvalidTopicError (permanent) for a name Kafka cannot have."""
        topic = self.settings.topic(row.aggregate_type)
        if not _TOPIC_NAME.fullmatch(topic):
            raise InvalidTopicError(f"{topic!r} is not a valid Kafka topic name")
        return topic

    async def send(self, row: OutboxRow) -> Awaitable[RecordMetadata]:
        """Queue one record; the returned future resolves when Kafka acknowledged it.
        Raises at once for records the producer refuses before sending (too large)."""
        assert self._producer is not None, "publisher not started"
        future: Awaitable[RecordMetadata] = await self._producer.send(
            self.topic_of(row),
            value=row.payload.encode(),
            key=row.aggregate_id.encode(),
            headers=cloudevent_headers(row),
        )
        return future
