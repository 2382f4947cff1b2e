"""Kafka helpers shared by the processes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from postroom.settings import KafkaSettings


async def create_missing_topics(
    settings: KafkaSettings, topics: Iterable[str], *, client_id: str, request_timeout: float = 30.0
) -> None:
    """Create those of `topics` the cluster lacks, with the configured partition count and
    replication factor. Per-topic errors come back in the answer rather than as exceptions:
    "already exists" means another process was quicker, and anything else shows up at the
    first use of the topic."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=client_id,
        request_timeout_ms=int(request_timeout * 1000),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = sorted(set(topics) - existing)
        if wanted:
            await admin.create_topics(
                [
                    NewTopic(
                        topic, settings.kafka_topic_partitions, settings.kafka_replication_factor
                    )
                    for topic in wanted
                ]
            )
    finally:
        await admin.close()


def text_headers(headers: Any) -> tuple[tuple[str, str], ...]:
    """A record's headers as text, in order. A header whose value is null (Kafka Connect
    writes one for a null column) counts as absent; bytes that are not UTF-8 are replaced."""
    return tuple(
        (str(key), value.decode(errors="replace")) for key, value in headers if value is not None
    )


async def topic_partitions(
    bootstrap_servers: str, topic: str, *, request_timeout: float = 40.0
) -> list[int]:
    """The partitions of `topic`, asked of the cluster now ([] if it does not exist). A
    consumer's `partitions_for_topic` only knows topics it already follows."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(request_timeout * 1000)
    )
    try:
        await admin.start()
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code"):
        return []
    return sorted(p["partition"] for p in described.get("partitions", ()))
