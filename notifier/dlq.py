"""The dead-letter topic: the notifier writes to it, operators list and replay what is there.

A dead letter is the record that asked for an email (or a record that could not be read),
unchanged, with `dlq_*` headers saying why. The writer waits for Kafka's acknowledgement;
callers mark nothing final until it returns.

Replaying puts each record back on the topic it came from, with its original headers. A record
that failed delivery also puts its notification back to `pending` first, due at once (its
attempt count reset; its doubt kept, so the notifier still searches Postmark before sending
again). A notification of a deleted user (other than their goodbye) is not: it is settled as
suppressed, "user deleted", and its record, which names the address, stays off the topic
(invariant 10). Replays are tracked with the consumer group `<group>-dlq-replay`: a record is
replayed once, and `--from-beginning` replays everything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier.plans import SourceRecord
from notifier.settings import NotifierSettings
from notifier.store import NotificationStore, Replay
from postroom.kafka import text_headers, topic_partitions
from postroom.outbox import OutboxWriter


class DeadLetterWriter:
    """Writes dead letters through one producer, started on first use and started again
    after a failure (so an unreachable broker costs a timeout, never a stuck producer)."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self.topic = settings.topic("notifier.dlq")
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def write(
        self,
        source: SourceRecord,
        *,
        reason: str,
        error: str,
        notification_id: uuid.UUID | None = None,
    ) -> None:
        headers = [
            *((key, value.encode()) for key, value in source.headers),
            ("dlq_reason", reason.encode()),
            ("dlq_error", error[:1000].encode()),
            ("dlq_topic", source.topic.encode()),
            ("dlq_partition", str(source.partition).encode()),
            ("dlq_offset", str(source.offset).encode()),
        ]
        if notification_id is not None:
            headers.append(("dlq_notification_id", str(notification_id).encode()))
        await self.write_raw(
            key=source.key.encode() if source.key is not None else None,
            value=source.value.encode(),
            headers=headers,
        )

    async def write_raw(
        self, *, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        producer = await self._started()
        try:
            await producer.send_and_wait(self.topic, value=value, key=key, headers=headers)
        except BaseException:
            await self._discard(producer)
            raise

    async def stop(self) -> None:
        if self._producer is not None:
            await self._discard(self._producer)

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                # The topic is created at start by the consumer, not here: a broker out of
                # reach would cost an admin client's timeout on every retry.
                s = self.settings
                producer = AIOKafkaProducer(
                    bootstrap_servers=s.kafka_bootstrap_servers,
                    client_id="postroom-notifier-dlq",
                    acks="all",
                    enable_idempotence=s.kafka_enable_idempotence,
                    request_timeout_ms=10_000,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def _discard(self, producer: AIOKafkaProducer) -> None:
        if self._producer is producer:
            self._producer = None
        with contextlib.suppress(Exception):
            await producer.stop()


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
    settings: NotifierSettings,
    consumer: AIOKafkaConsumer,
    *,
    from_beginning: bool,
    request_timeout: float,
) -> list[DeadLetter]:
    topic = settings.topic("notifier.dlq")
    partitions = [
        TopicPartition(topic, p)
        for p in await topic_partitions(
            settings.kafka_bootstrap_servers, topic, request_timeout=request_timeout
        )
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
                    headers=dict(text_headers(m.headers)),
                    raw_headers=list(m.headers),
                    key=m.key,
                    value=m.value,
                )
            )
    return sorted(letters, key=lambda letter: (letter.partition, letter.offset))


async def list_dead_letters(
    settings: NotifierSettings, *, request_timeout: float = 40.0
) -> list[DeadLetter]:
    """Every dead letter on the topic. A broker that does not answer a request (connecting
    included) within `request_timeout` seconds raises KafkaConnectionError or
    KafkaTimeoutError."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        request_timeout_ms=int(request_timeout * 1000),
    )
    # Stopped even when it never started, or it is reported unclosed at exit.
    try:
        await consumer.start()
        return await _read(settings, consumer, from_beginning=True, request_timeout=request_timeout)
    finally:
        await consumer.stop()


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replay did with the dead letters it chose: put back on their topic, held back
    (their notification's user has been deleted), skipped (their notification was sent or
    settled since), or left for a later replay (still being worked on); and how many letters
    of other reasons it left unread."""

    replayed: int
    held_back: int = 0
    skipped: int = 0
    left: int = 0
    other_reasons: int = 0


async def replay(
    settings: NotifierSettings,
    engine: AsyncEngine,
    *,
    from_beginning: bool = False,
    reason: str | None = None,
    progress: Callable[[int, int], Any] = lambda done, total: None,
    request_timeout: float = 40.0,
) -> Replayed:
    """Replay dead letters not replayed yet (or all).

    The replay group's offset on each partition moves only past letters dealt with for good:
    it stops at the first letter of another reason than `reason`, or whose notification is
    still pending, so a later replay still finds it. Letters after that one are read again
    then; replaying one twice is harmless (a notification no longer failed is skipped, and
    the notifier takes a record once by its `ce_id`). The offset never moves back.

    A broker that does not answer a request (connecting included) within `request_timeout`
    seconds raises KafkaConnectionError or KafkaTimeoutError."""
    store = NotificationStore(
        engine,
        OutboxWriter(shards=settings.relay_shards, notify=settings.outbox_notify),
        lease=settings.notifier_lease,
        settle=settings.notifier_search_settle,
        reach=settings.call_reach,
        search_window=settings.search_window,
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.notifier_group_id}-dlq-replay",
        enable_auto_commit=False,
        request_timeout_ms=int(request_timeout * 1000),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        request_timeout_ms=int(request_timeout * 1000),
    )
    # Both stopped even when one never started, or it is reported unclosed at exit.
    try:
        await consumer.start()
        await producer.start()
        letters = await _read(
            settings, consumer, from_beginning=from_beginning, request_timeout=request_timeout
        )
        committed = {
            tp.partition: await consumer.committed(tp) or 0 for tp in consumer.assignment()
        }
        chosen = sum(1 for letter in letters if reason is None or letter.reason == reason)
        counts = dict.fromkeys(("replayed", "held_back", "skipped", "left", "other_reasons"), 0)
        # Per partition, the offset a later replay starts from; stopped: it moves no further.
        after: dict[int, int] = {}
        stopped: set[int] = set()
        try:
            for letter in letters:
                if reason is not None and letter.reason != reason:
                    outcome = "other_reasons"
                else:
                    outcome = await _replay_one(store, producer, letter)
                    progress(sum(counts.values()) - counts["other_reasons"] + 1, chosen)
                counts[outcome] += 1
                if outcome in ("left", "other_reasons"):
                    stopped.add(letter.partition)
                elif letter.partition not in stopped:
                    after[letter.partition] = letter.offset + 1
        finally:
            # What was dealt with before a failure stays dealt with; the offset never moves
            # back (--from-beginning read letters dealt with before).
            moved = {
                TopicPartition(settings.topic("notifier.dlq"), partition): offset
                for partition, offset in after.items()
                if offset > committed.get(partition, 0)
            }
            if moved:
                await consumer.commit(moved)
        return Replayed(**counts)
    finally:
        await producer.stop()
        await consumer.stop()


async def _replay_one(
    store: NotificationStore, producer: AIOKafkaProducer, letter: DeadLetter
) -> str:
    """Replay one chosen letter; which of Replayed's counts it adds to."""
    notification = letter.headers.get("dlq_notification_id")
    outcome = await store.replay_failed(uuid.UUID(notification)) if notification else None
    if outcome is not None and not outcome.puts_back:
        return {Replay.ERASED: "held_back", Replay.SETTLED: "skipped"}.get(outcome, "left")
    original = [(k, v) for k, v in letter.raw_headers if not k.startswith("dlq_")]
    await producer.send_and_wait(
        letter.headers["dlq_topic"], value=letter.value, key=letter.key, headers=original
    )
    return "replayed"
