"""Kafka records as the relay publishes them: reading them back as another service would,
and building one by hand."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from postroom import events
from postroom.kafka import topic_partitions


@dataclass(frozen=True)
class Consumed:
    """One record as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    key: str
    value: Any  # the JSON data, or the raw bytes of a value that is not JSON
    headers: dict[str, str]
    # As they came, for byte-for-byte comparisons: the value, and the headers in order.
    raw_value: bytes | None = None
    raw_headers: tuple[tuple[str, bytes | None], ...] = ()

    @property
    def ce_id(self) -> str:
        return self.headers["ce_id"]


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 30.0, settle: float = 0.3
) -> list[Consumed]:
    """Every record of `topic` from the start, once at least `expect` arrived (or time ran
    out), plus whatever else arrives within `settle` seconds after that."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Consumed] = []
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] | None = None
        while partitions is None and time.monotonic() < deadline:
            partitions = set(await topic_partitions(bootstrap, topic)) or None
            if partitions is None:
                await asyncio.sleep(0.1)
        assert partitions, f"topic {topic} does not exist"
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            for messages in batch.values():
                for m in messages:
                    records.append(
                        Consumed(
                            topic=m.topic,
                            partition=m.partition,
                            offset=m.offset,
                            key=(m.key or b"").decode(),
                            value=_decode(m.value),
                            headers={k: v.decode() for k, v in m.headers if v is not None},
                            raw_value=m.value,
                            raw_headers=tuple(m.headers),
                        )
                    )
            if len(records) >= expect:
                settle_until = settle_until or time.monotonic() + settle
                if time.monotonic() >= settle_until:
                    break
    finally:
        await consumer.stop()
    return records


def _decode(value: bytes | None) -> Any:
    try:
        return json.loads(value or b"null")
    except ValueError:
        return value


def first_occurrences(records: list[Consumed]) -> list[Consumed]:
    """Drop repeats by `ce_id`, keeping the first, as consumers are told to."""
    seen: set[str] = set()
    kept = []
    for record in records:
        if record.ce_id not in seen:
            seen.add(record.ce_id)
            kept.append(record)
    return kept


def registered_record(email: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """A `user.registered` record as the relay publishes it: key, value, CloudEvents headers."""
    user_id = uuid.uuid4()
    data = events.UserRegistered(
        user_id=user_id, version=1, email=email, name="Batch", registered_at=datetime.now(UTC)
    )
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", str(uuid.uuid4()).encode()),
        ("ce_source", events.SOURCE_API.encode()),
        ("ce_type", b"user.registered"),
        ("ce_time", datetime.now(UTC).isoformat().replace("+00:00", "Z").encode()),
        ("ce_subject", str(user_id).encode()),
        ("content-type", b"application/json"),
    ]
    return str(user_id).encode(), data.model_dump_json().encode(), headers
