"""`postroom events tail`: print the records of a topic, as another service would read them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from postroom.kafka import text_headers, topic_partitions
from postroom.settings import KafkaSettings


async def tail(
    settings: KafkaSettings,
    *,
    topic: str,
    from_beginning: bool,
    limit: int | None,
    wait: float | None,
    emit: Callable[[str], None],
    request_timeout: float = 40.0,
) -> int:
    """Print one JSON line per record; stop after `limit` records or `wait` idle seconds.
    Returns how many were printed. A broker that does not answer a request (connecting
    included) within `request_timeout` seconds raises KafkaConnectionError or
    KafkaTimeoutError."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        request_timeout_ms=int(request_timeout * 1000),
    )
    printed = 0
    # Stopped even when it never started: a consumer left open is reported when the process
    # exits ("Unclosed AIOKafkaConsumer").
    try:
        await consumer.start()
        partitions: list[int] = []
        deadline = time.monotonic() + (wait or 10.0)
        while not partitions:
            partitions = await topic_partitions(
                settings.kafka_bootstrap_servers, topic, request_timeout=request_timeout
            )
            if not partitions:
                if time.monotonic() > deadline:
                    raise LookupError(f"topic {topic} does not exist (yet)")
                await asyncio.sleep(0.2)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        if from_beginning:
            await consumer.seek_to_beginning()
        else:
            await consumer.seek_to_end()
        idle_since = time.monotonic()
        while limit is None or printed < limit:
            batch = await consumer.getmany(timeout_ms=200)
            records = [m for messages in batch.values() for m in messages]
            if not records:
                if wait is not None and time.monotonic() - idle_since > wait:
                    break
                continue
            idle_since = time.monotonic()
            for m in records:
                headers = dict(text_headers(m.headers))
                emit(
                    json.dumps(
                        {
                            "partition": m.partition,
                            "offset": m.offset,
                            "key": (m.key or b"").decode(errors="replace"),
                            "type": headers.get("ce_type"),
                            "id": headers.get("ce_id"),
                            "time": headers.get("ce_time"),
                            "data": _data(m.value),
                        }
                    )
                )
                printed += 1
                if limit is not None and printed >= limit:
                    break
    finally:
        await consumer.stop()
    return printed


def _data(value: bytes | None) -> object:
    """The event's JSON data; a value that is not JSON (a poison record) as text."""
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value.decode(errors="replace")
