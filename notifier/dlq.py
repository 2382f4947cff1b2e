"""The dead-letter topic, for operators: list what is there, and replay it.

Replaying puts each record back on the topic it came from, with its original headers. A record
that failed delivery also puts its notification back to `pending` first (its attempt count
reset; its last attempt id kept, so the notifier still asks Postmark before sending again).
Replays are tracked with the consumer group `<group>-dlq-replay`: a record is replayed once,
and `--from-beginning` replays everything again."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.models import notifications
from postroom.settings import NotifierSettings


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    headers: dict[str, str]
    raw_headers: list[tuple[str, bytes]]
    key: bytes | None
    value: bytes | None

    @property
    def reason(self) -> str:
        return self.headers.get("dlq_reason", "")


async def _read(
    settings: NotifierSettings, consumer: AIOKafkaConsumer, *, from_beginning: bool
) -> list[DeadLetter]:
    topic = settings.topic("notifier.dlq")
    await consumer.topics()
    partitions = [
        TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    if not partitions:
        return []
    consumer.assign(partitions)
    if from_beginning:
        await consumer.seek_to_beginning(*partitions)
    else:
        for tp in partitions:
            if await consumer.committed(tp) is None:
                await consumer.seek_to_beginning(tp)
    letters: list[DeadLetter] = []
    idle = 0
    # Read until the topic has nothing more for a moment (end offsets are not used: some
    # Kafka-compatible brokers report them short).
    while idle < 3:
        batch = await consumer.getmany(timeout_ms=300)
        records = [m for messages in batch.values() for m in messages]
        idle = 0 if records else idle + 1
        for m in records:
            letters.append(
                DeadLetter(
                    partition=m.partition,
                    offset=m.offset,
                    headers={k: v.decode(errors="replace") for k, v in m.headers},
                    raw_headers=list(m.headers),
                    key=m.key,
                    value=m.value,
                )
            )
    return sorted(letters, key=lambda letter: (letter.partition, letter.offset))


async def list_dead_letters(settings: NotifierSettings) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return await _read(settings, consumer, from_beginning=True)
    finally:
        await consumer.stop()


async def replay(
    settings: NotifierSettings,
    engine: AsyncEngine,
    *,
    from_beginning: bool = False,
    reason: str | None = None,
    progress: Callable[[int, int], Any] = lambda done, total: None,
) -> int:
    """Replay dead letters not replayed yet (or all); return how many went back."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.notifier_group_id}-dlq-replay",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
    )
    await consumer.start()
    await producer.start()
    try:
        letters = await _read(settings, consumer, from_beginning=from_beginning)
        chosen = [letter for letter in letters if reason is None or letter.reason == reason]
        for done, letter in enumerate(chosen, start=1):
            notification = letter.headers.get("dlq_notification_id")
            if notification:
                async with engine.begin() as conn:
                    await conn.execute(
                        sa.update(notifications)
                        .where(
                            notifications.c.id == uuid.UUID(notification),
                            notifications.c.status == "failed",
                        )
                        .values(status="pending", attempts=0, updated_at=sa.func.now())
                    )
            original = [(k, v) for k, v in letter.raw_headers if not k.startswith("dlq_")]
            await producer.send_and_wait(
                letter.headers["dlq_topic"], value=letter.value, key=letter.key, headers=original
            )
            progress(done, len(chosen))
        if letters:
            topic = settings.topic("notifier.dlq")
            last: dict[TopicPartition, int] = {}
            for letter in letters:
                last[TopicPartition(topic, letter.partition)] = letter.offset + 1
            await consumer.commit(last)
        return len(chosen)
    finally:
        await producer.stop()
        await consumer.stop()
