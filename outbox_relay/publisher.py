"""Kafka side of the relay: one aiokafka producer, topics, CloudEvents records, and which
errors are worth retrying. When tracing is on, each record gets a `send <topic>` span (child
of the trace stored with its row) whose context the record carries as `traceparent`
(`postroom.tracing`)."""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.partitioner import murmur2
from opentelemetry.trace import Span

from outbox_relay.claims import OutboxRow
from outbox_relay.settings import RelaySettings
from postroom import tracing
from postroom.events import ALL_EVENTS
from postroom.kafka import create_missing_topics

# Kafka will refuse these records however often they are sent: park them (invariant 4).
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
)
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

Headers = list[tuple[str, bytes]]


def is_permanent(error: BaseException) -> bool:
    return isinstance(error, PERMANENT_ERRORS)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


@functools.lru_cache(maxsize=1024)
def _stored_headers(text: str) -> dict[str, str]:
    parsed: dict[str, str] = json.loads(text) if text else {}
    return parsed


def cloudevent_headers(row: OutboxRow, traceparent: str | None = None) -> Headers:
    """CloudEvents 1.0 binary-mode headers; `ce_id` is the row's event id, stable on re-sends.
    Each comes from its column, as Debezium's outbox event router places them
    (deploy/debezium); a row from before those columns gives `headers` and `created_at`.
    `traceparent`, when given, replaces the trace context stored with the row."""
    stored = _stored_headers(row.headers)
    headers: Headers = [
        ("ce_specversion", row.ce_specversion.encode()),
        ("ce_id", row.event_id.encode()),
        ("ce_source", (row.ce_source or stored.get("ce_source", "/postroom")).encode()),
        ("ce_type", row.event_type.encode()),
        ("ce_time", (row.ce_time or _rfc3339(row.created_at)).encode()),
        ("ce_subject", row.aggregate_id.encode()),
        ("content-type", row.content_type.encode()),
    ]
    traceparent = traceparent or stored_traceparent(row)
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    return headers


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def stored_traceparent(row: OutboxRow) -> str | None:
    return row.traceparent or _stored_headers(row.headers).get("traceparent")


class Publisher:
    """Sends outbox rows; recreated by the relay after errors that leave it unusable."""

    def __init__(self, settings: RelaySettings, *, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._topics: set[str] = set()
        self._partition_cache: dict[str, list[int]] = {}

    async def start(self) -> None:
        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=s.kafka_enable_idempotence,
            linger_ms=0,
            # A cycle's records for one partition fit one batch (see RELAY_BATCH_BYTES).
            max_batch_size=s.relay_batch_bytes * 2,
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
        await self.ensure_topics(sorted({s.topic(data.aggregate_type) for data in ALL_EVENTS}))

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def ensure_topics(self, topics: list[str]) -> None:
        """Create missing topics with the configured partition count."""
        missing = [topic for topic in topics if topic not in self._topics]
        if not missing:
            return
        await create_missing_topics(
            self.settings,
            missing,
            client_id=f"{self.client_id}-admin",
            request_timeout=self.settings.relay_send_timeout,
        )
        self._topics.update(missing)

    def forget_topics(self) -> None:
        """Check the topics again before the next send (one may have been deleted)."""
        self._topics.clear()
        self._partition_cache.clear()

    def topic_of(self, row: OutboxRow) -> str:
        """The row's topic; InvalidTopicError (permanent) for a name Kafka cannot have."""
        topic = self.settings.topic(row.aggregate_type)
        if not _TOPIC_NAME.fullmatch(topic):
            raise InvalidTopicError(f"{topic!r} is not a valid Kafka topic name")
        return topic

    async def _partitions(self, topic: str) -> list[int]:
        if topic not in self._partition_cache:
            assert self._producer is not None
            known = await self._producer.partitions_for(topic)
            self._partition_cache[topic] = sorted(known)
        return self._partition_cache[topic]

    async def publish(self, rows: Sequence[OutboxRow]) -> list[BaseException | None]:
        """Send `rows` and await Kafka's answers; per row, None (acknowledged) or the error.

        Records are grouped into one producer batch per partition, so a partition's records
        of this call are appended together or not at all. Once a row of a shard cannot be
        sent, the later rows of that shard are held back (Deferred), so none overtakes it."""
        # Asked once per call: with tracing off, no span nor attribute is built per row.
        spans: dict[int, Span] | None = {} if tracing.enabled() else None
        try:
            return await self._publish(rows, spans)
        except BaseException as exc:
            for span in (spans or {}).values():  # the rows whose answer never came
                tracing.end_failed(span, exc)
            raise

    async def _publish(
        self, rows: Sequence[OutboxRow], spans: dict[int, Span] | None
    ) -> list[BaseException | None]:
        assert self._producer is not None, "publisher not started"
        producer = self._producer
        results: list[BaseException | None] = [None] * len(rows)
        batches: dict[tuple[str, int], tuple[Any, list[int]]] = {}
        halted: set[int] = set()
        for index, row in enumerate(rows):
            if row.shard in halted:
                results[index] = Deferred()
                continue
            try:
                topic = self.topic_of(row)
            except InvalidTopicError as exc:
                results[index] = exc
                continue
            key = row.aggregate_id.encode()
            value = row.payload.encode()
            if len(value) > self.settings.relay_max_record_bytes:
                results[index] = MessageSizeTooLargeError(
                    f"record of {len(value)} bytes exceeds RELAY_MAX_RECORD_BYTES "
                    f"({self.settings.relay_max_record_bytes})"
                )
                continue
            partition = partition_for(key, tuple(await self._partitions(topic)))
            batch, members = batches.get((topic, partition)) or (producer.create_batch(), [])
            batches[(topic, partition)] = (batch, members)
            if spans is None:
                headers = cloudevent_headers(row)
            else:
                spans[index] = self._send_span(row, topic, partition)
                headers = cloudevent_headers(row, tracing.traceparent_of(spans[index]))
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                refusal: KafkaError
                if not members:  # alone in an empty batch and still too big: never fits
                    refusal = MessageSizeTooLargeError(
                        f"record of {len(value)} bytes does not fit a producer batch"
                    )
                else:
                    # The partition's batch is full: this row and the rest of its shard wait.
                    refusal = Deferred()
                    halted.add(row.shard)
                results[index] = refusal
                if spans is not None:
                    span = spans.pop(index)
                    if isinstance(refusal, Deferred):
                        # Backpressure, not a failure: the row is sent (with a new span) in a
                        # later cycle, so a draining backlog raises no span errors.
                        span.set_attribute("postroom.relay.deferred", True)
                        span.end()
                    else:
                        tracing.end_failed(span, refusal)
                continue
            members.append(index)

        sent: list[tuple[asyncio.Future[Any], list[int]]] = []
        for (topic, partition), (batch, members) in batches.items():
            if not members:
                continue
            batch.close()
            future = await producer.send_batch(batch, topic, partition=partition)
            sent.append((future, members))
        if sent:
            # The producer fails a batch by itself after its request timeout; this bound only
            # catches a wedged producer.
            _, late = await asyncio.wait(
                [future for future, _ in sent], timeout=self.settings.relay_send_timeout * 2
            )
            for future, members in sent:
                error: BaseException | None
                if future in late:
                    future.cancel()
                    error = KafkaTimeoutError("no acknowledgement in time")
                else:
                    error = future.exception()
                if error is not None and is_permanent(error) and len(members) > 1:
                    # Kafka refused the batch, not necessarily any one record in it: never
                    # park a bystander. Retried like any transient failure; the log says to
                    # lower RELAY_BATCH_BYTES (the broker's message.max.bytes is smaller).
                    error = BatchRefused(f"batch of {len(members)} records: {describe(error)}")
                for index in members:
                    results[index] = error
                if spans is not None:
                    _end_send_spans(spans, members, error, None if error else future.result())
        return results

    def _send_span(self, row: OutboxRow, topic: str, partition: int) -> Span:
        assert self._producer is not None
        return tracing.start_send_span(
            topic=topic,
            partition=partition,
            key=row.aggregate_id,
            message_id=row.event_id,
            parent=stored_traceparent(row),
            client_id=self.client_id,
            server=self._leader(topic, partition),
        )

    def _leader(self, topic: str, partition: int) -> tuple[str, int] | None:
        """The broker that leads `partition`, as the producer's metadata knows it."""
        assert self._producer is not None
        cluster = self._producer.client.cluster
        broker = cluster.broker_metadata(
            cluster.leader_for_partition(TopicPartition(topic, partition))
        )
        return None if broker is None else (broker.host, broker.port)


def _end_send_spans(
    spans: dict[int, Span], members: list[int], error: BaseException | None, answer: Any
) -> None:
    """End the spans of a batch's records; on success each learns its offset (the batch's
    base offset plus the record's place in it)."""
    for position, index in enumerate(members):
        span = spans.pop(index, None)
        if span is None:
            continue
        if error is not None:
            tracing.end_failed(span, error)
            continue
        if answer is not None and answer.offset is not None:
            span.set_attribute("messaging.kafka.offset", answer.offset + position)
        span.end()


class Deferred(KafkaError):  # type: ignore[misc]
    """Held back this cycle, behind a row of its shard that could not be sent."""


class BatchRefused(KafkaError):  # type: ignore[misc]
    """Kafka refused a whole batch of several records (too large for the broker)."""


@functools.lru_cache(maxsize=65_536)
def partition_for(key: bytes, partitions: tuple[int, ...]) -> int:
    """Kafka's default partitioner (murmur2 of the key), as the Java client and aiokafka
    compute it; cached, because a user's events share a key."""
    hashed: int = murmur2(key)
    return partitions[(hashed & 0x7FFFFFFF) % len(partitions)]
