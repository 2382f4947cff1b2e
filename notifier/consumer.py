"""The notifier's Kafka side (invariant 5): consume `<prefix>.user` in the group
`postroom-notifier`, partitions side by side and each in order, and commit a partition's
offsets only once every email its records asked for has reached a final, committed state in
PostgreSQL (or its record sits on the dead-letter topic)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from notifier.delivery import Delivery
from notifier.metrics import NotifierMetrics
from notifier.plans import PlannedEmail, UnreadableEvent, plan, read_record
from notifier.postmark import PostmarkUnauthorized
from postroom.backoff import Backoff
from postroom.kafka import create_missing_topics
from postroom.settings import NotifierSettings

log = structlog.get_logger("postroom.notifier")

Record = Any  # aiokafka's ConsumerRecord, which ships no type information


class State(enum.Enum):
    STARTING = "starting"
    CONSUMING = "consuming"
    HALTED = "halted"  # stopped on purpose: a fix is needed (the Postmark token)
    STOPPED = "stopped"


class Consumer:
    def __init__(
        self, settings: NotifierSettings, *, delivery: Delivery, metrics: NotifierMetrics
    ) -> None:
        self.settings = settings
        self.delivery = delivery
        self.metrics = metrics
        self.state = State.STARTING
        self.halt_reason = ""
        self._stopping = asyncio.Event()
        self.topic = settings.topic("user")
        self.dlq_topic = settings.topic("notifier.dlq")

    def stop(self) -> None:
        self._stopping.set()

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.notifier_backoff_initial, self.settings.notifier_backoff_max)

    async def run(self) -> None:
        """Consume until stopped or halted; reconnect with backoff after Kafka errors."""
        backoff = Backoff(
            self.settings.notifier_backoff_initial, self.settings.notifier_backoff_max
        )
        while not self._stopping.is_set() and self.state is not State.HALTED:
            try:
                await self._consume()
            except KafkaError as exc:
                log.warning("kafka unavailable", error=f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff.next_delay())
        if self.state is not State.HALTED:
            self.state = State.STOPPED

    async def _consume(self) -> None:
        s = self.settings
        await create_missing_topics(
            s, [self.topic, self.dlq_topic], client_id="postroom-notifier-admin"
        )
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.notifier_group_id,
            client_id="postroom-notifier",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Retries with backoff can hold a batch for minutes; stay in the group meanwhile.
            max_poll_interval_ms=30 * 60 * 1000,
            metadata_max_age_ms=30_000,
            # Kafka's smallest allowed session: a notifier that died without leaving the group
            # (SIGKILL) holds its partitions for this long before another takes them.
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
            # How long an idle fetch waits at the broker: bounds the pickup delay of a new
            # event where the broker does not answer a waiting fetch as soon as data arrives.
            fetch_max_wait_ms=100,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id="postroom-notifier-dlq",
            acks="all",
            enable_idempotence=s.kafka_enable_idempotence,
        )
        await producer.start()
        try:
            await consumer.start()
            try:
                self.state = State.CONSUMING
                log.info("consuming", topic=self.topic, group=s.notifier_group_id)
                await self._loop(consumer, producer)
            finally:
                await consumer.stop()
        finally:
            await producer.stop()

    async def _loop(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        backoff = Backoff(
            self.settings.notifier_backoff_initial, self.settings.notifier_backoff_max
        )
        while not self._stopping.is_set():
            batches = await consumer.getmany(
                timeout_ms=500, max_records=self.settings.notifier_batch_size
            )
            if not batches:
                await self._update_lag(consumer)
                continue
            items = list(batches.items())
            outcomes = await asyncio.gather(
                *(self._process(tp, records, producer) for tp, records in items),
                return_exceptions=True,
            )
            offsets: dict[TopicPartition, int] = {}
            trouble = False
            for (tp, records), outcome in zip(items, outcomes, strict=True):
                if isinstance(outcome, PostmarkUnauthorized):
                    self._halt(outcome)
                    return
                if isinstance(outcome, BaseException):
                    trouble = True
                    log.warning(
                        "batch not settled; will read it again",
                        partition=tp.partition,
                        error=f"{type(outcome).__name__}: {outcome}",
                    )
                    consumer.seek(tp, records[0].offset)
                else:
                    offsets[tp] = records[-1].offset + 1
            if offsets:
                await consumer.commit(offsets)
            await self._update_lag(consumer)
            if trouble:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff.next_delay())
            else:
                backoff.reset()

    async def _process(
        self, tp: TopicPartition, records: Sequence[Record], producer: AIOKafkaProducer
    ) -> None:
        """Settle one partition's records, in order: plan their emails, deliver them, and put
        what cannot be handled on the dead-letter topic."""
        planned: list[PlannedEmail] = []
        source_of: dict[str, Record] = {}
        for record in records:
            headers = {key: value.decode(errors="replace") for key, value in record.headers}
            try:
                source = read_record(headers, record.value)
                plans = plan(source)
            except UnreadableEvent as exc:
                await self._dead_letter(producer, record, "unreadable", str(exc))
                continue
            self.metrics.events.labels(source.event_type).inc()
            planned.extend(plans)
            source_of[str(source.event_id)] = record
        report = await self.delivery.deliver(planned)
        for email, error in report.gave_up:
            record = source_of[str(email.event_id)]
            await self._dead_letter(producer, record, "delivery-failed", error, email=email)

    async def _dead_letter(
        self,
        producer: AIOKafkaProducer,
        record: Record,
        reason: str,
        error: str,
        *,
        email: PlannedEmail | None = None,
    ) -> None:
        headers = [
            *record.headers,
            ("dlq_reason", reason.encode()),
            ("dlq_error", error[:1000].encode()),
            ("dlq_topic", record.topic.encode()),
            ("dlq_partition", str(record.partition).encode()),
            ("dlq_offset", str(record.offset).encode()),
        ]
        if email is not None:
            headers.append(("dlq_notification_id", str(email.id).encode()))
        await producer.send_and_wait(
            self.dlq_topic, value=record.value, key=record.key, headers=headers
        )
        self.metrics.dead_letters.labels(reason).inc()
        log.error(
            "record sent to the dead-letter topic",
            reason=reason,
            error=error[:300],
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )

    def _halt(self, error: PostmarkUnauthorized) -> None:
        self.state = State.HALTED
        self.halt_reason = (
            "Postmark refused the server token (401 / ErrorCode 10): set a valid "
            "POSTMARK_SERVER_TOKEN and restart; nothing was marked failed"
        )
        log.error("consumption stopped", reason=self.halt_reason, error=str(error))

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            with contextlib.suppress(Exception):
                position = await consumer.position(tp)
                self.metrics.lag.labels(str(tp.partition)).set(max(0, end - position))
