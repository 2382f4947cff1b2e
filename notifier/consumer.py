"""The notifier's Kafka side (invariant 5): consume `<prefix>.user` in the group
`postroom-notifier`, partitions side by side and each in order, and commit a partition's
offsets only once every email its records asked for is recorded in PostgreSQL (and has had
its first attempt), or its record sits on the dead-letter topic. What is still pending then
is the retry loop's (`notifier/retries.py`), so a waiting email never holds up its partition.

Rebalances: a batch in flight finishes, and its offsets are committed, before the partitions
it came from are given up (the listener waits for it); records fetched for partitions this
consumer no longer owns are dropped unprocessed and their offsets never committed. Claims in
the table (`notifier/store.py`) make a late or doubled batch harmless anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from opentelemetry.trace import Span

from notifier.delivery import Delivery
from notifier.dlq import DeadLetterWriter
from notifier.metrics import NotifierMetrics
from notifier.plans import (
    PlannedEmail,
    SourceRecord,
    UnreadableEvent,
    plan,
    read_record,
)
from notifier.postmark import PostmarkUnauthorized
from notifier.settings import NotifierSettings
from postroom import tracing
from postroom.backoff import Backoff
from postroom.kafka import create_missing_topics, text_headers

log = structlog.get_logger("postroom.notifier")

Record = Any  # aiokafka's ConsumerRecord, which ships no type information


class State(enum.Enum):
    STARTING = "starting"
    CONSUMING = "consuming"
    HALTED = "halted"  # stopped on purpose: a fix is needed (the Postmark token)
    STOPPED = "stopped"


# The lag gauge is a reading for dashboards: once a second is enough.
_LAG_INTERVAL = 1.0

# An idle consumer one of whose partitions' leaders has not answered a fetch for this long is
# not ready (/readyz): Kafka, or part of it, is out of reach. Fetches of an idle partition
# are answered every NOTIFIER_FETCH_WAIT at most.
KAFKA_SILENCE_LIMIT = 5.0

HALT_REASON = (
    "Postmark refused the server token (401 / ErrorCode 10): set a valid "
    "POSTMARK_SERVER_TOKEN and restart; nothing was marked failed"
)


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    """Which partitions this consumer may still work on and commit. Revocation waits for
    the batch in flight (it holds `busy`), so its offsets are committed before they go."""

    def __init__(self) -> None:
        self.busy = asyncio.Lock()
        self.owned: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.busy:
            self.owned -= set(revoked)
        if revoked:
            log.info("partitions revoked", partitions=sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self.busy:
            self.owned = set(assigned)
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in assigned))


def _silence(consumer: AIOKafkaConsumer) -> float:
    """Seconds since the leader of the longest-silent assigned partition last answered a
    fetch (0 if none is assigned: there is nothing to tell). One partition out of reach is
    enough: its emails wait."""
    stamps = [consumer.last_poll_timestamp(tp) for tp in consumer.assignment()]
    known = [stamp for stamp in stamps if stamp]
    if not known:
        return 0.0
    return max(0.0, time.time() - float(min(known)) / 1000)


def _unexpected(exc: Exception) -> str:
    """A reading failure no rule foresaw, by its kind: its text may quote the record."""
    return f"the record could not be read ({type(exc).__name__})"


async def _stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Leave the group and close. With the broker already gone, aiokafka's fetcher lets the
    cancellation of its own fetch task escape from `stop()`: that one is not ours to raise
    (the process would fail its shutdown), unless this task is being cancelled itself."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("consumer closed without the broker")


class Consumer:
    def __init__(
        self,
        settings: NotifierSettings,
        *,
        delivery: Delivery,
        dead_letters: DeadLetterWriter,
        metrics: NotifierMetrics,
    ) -> None:
        self.settings = settings
        self.delivery = delivery
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.state = State.STARTING
        self.halt_reason = ""
        self._stopping = asyncio.Event()
        self._lag_updated = float("-inf")
        self.topic = settings.topic("user")
        # Seconds since Kafka last answered a fetch of this consumer's partitions, measured
        # when a poll came back empty (0 when it brought records); and since when the loop
        # has been waiting on Kafka to commit offsets (None: it is not).
        self._silence = 0.0
        self._committing_since: float | None = None

    def stop(self) -> None:
        self._stopping.set()

    @property
    def kafka_silence(self) -> float:
        """Seconds Kafka has kept this consumer waiting: a partition's leader silent while
        there was nothing to read, or an offset commit unanswered."""
        committing = (
            time.monotonic() - self._committing_since if self._committing_since is not None else 0.0
        )
        return max(self._silence, committing)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set() or self.state is State.HALTED

    def halt(self, error: PostmarkUnauthorized) -> None:
        """Stop consuming until a fix: Postmark refused the server token."""
        if self.state is State.HALTED:
            return
        self.state = State.HALTED
        self.halt_reason = HALT_REASON
        self.metrics.halted.set(1)
        log.error("consumption stopped", reason=self.halt_reason, error=str(error))
        self._stopping.set()

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.notifier_backoff_initial, self.settings.notifier_backoff_max)

    async def run(self) -> None:
        """Consume until stopped or halted; reconnect with backoff after Kafka errors."""
        backoff = self._backoff()
        while not self.stopping:
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
            s, [self.topic, self.dead_letters.topic], client_id="postroom-notifier-admin"
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.notifier_group_id,
            client_id="postroom-notifier",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A batch in flight holds a rebalance until it is done (one Postmark call per
            # partition, the retries being the retry loop's): well within this.
            max_poll_interval_ms=30 * 60 * 1000,
            metadata_max_age_ms=30_000,
            # Kafka's smallest allowed session: a notifier that died without leaving the group
            # (SIGKILL) holds its partitions for this long before another takes them.
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
            # See NOTIFIER_FETCH_WAIT: the pickup delay of a lone event on some brokers.
            fetch_max_wait_ms=int(s.notifier_fetch_wait * 1000),
        )
        ownership = _Ownership()
        consumer.subscribe([self.topic], listener=ownership)
        await consumer.start()
        try:
            self.state = State.CONSUMING
            log.info("consuming", topic=self.topic, group=s.notifier_group_id)
            await self._loop(consumer, ownership)
        finally:
            await _stop_consumer(consumer)

    async def _loop(self, consumer: AIOKafkaConsumer, ownership: _Ownership) -> None:
        backoff = self._backoff()
        size = self.settings.notifier_batch_size
        last_batch = -math.inf  # when the last batch that was not full started
        while not self.stopping:
            batches = await consumer.getmany(timeout_ms=500, max_records=size)
            if batches:
                batches, last_batch = await self._gather(consumer, batches, last_batch)
            if not batches:
                self._silence = _silence(consumer)
                await self._update_lag(consumer)
                continue
            self._silence = 0.0
            async with ownership.busy:
                items = [(tp, records) for tp, records in batches.items() if tp in ownership.owned]
                trouble = False
                try:
                    # One batch for every partition fetched: one transaction to record, one
                    # Postmark call, one to mark sent, one commit, however the records spread.
                    await self._process([record for _, records in items for record in records])
                except PostmarkUnauthorized as exc:
                    self.halt(exc)
                    return
                except Exception as exc:  # any failure: read the records again, later
                    trouble = True
                    log.warning(
                        "batch not settled; will read it again",
                        partitions=sorted(tp.partition for tp, _ in items),
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    for tp, records in items:
                        with contextlib.suppress(KafkaError):  # no longer ours: fine
                            consumer.seek(tp, records[0].offset)
                else:
                    offsets = {tp: records[-1].offset + 1 for tp, records in items}
                    if offsets:
                        self._committing_since = time.monotonic()
                        try:
                            await consumer.commit(offsets)
                        except KafkaError as exc:  # the group moved on; the new owner re-reads
                            log.warning(
                                "offsets not committed", error=f"{type(exc).__name__}: {exc}"
                            )
                        finally:
                            self._committing_since = None
            await self._update_lag(consumer)
            if trouble:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff.next_delay())
            else:
                backoff.reset()

    async def _gather(
        self,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[Record]],
        last_batch: float,
    ) -> tuple[dict[TopicPartition, list[Record]], float]:
        """Let the records of the next few milliseconds join these: under a steady stream a
        batch starts NOTIFIER_GATHER after the last one started, not at every record. What
        the fetcher holds by then is added after each partition's records, in order."""
        size = self.settings.notifier_batch_size
        count = sum(len(records) for records in batches.values())
        if count >= size:
            return batches, -math.inf  # a backlog: the next batch goes at once
        wait = last_batch + self.settings.notifier_gather - time.monotonic()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
            more = await consumer.getmany(timeout_ms=0, max_records=size - count)
            for tp, records in more.items():
                have = batches.setdefault(tp, [])
                # Only what follows: a partition taken away and given back in the wait is
                # read again from its committed offset, and a record twice in one batch
                # would be planned twice.
                have.extend(r for r in records if not have or r.offset > have[-1].offset)
        return batches, time.monotonic()

    async def _process(self, records: Sequence[Record]) -> None:
        """Settle a batch of records (each partition's in order): plan their emails and hand
        them to delivery; unreadable records go to the dead-letter topic.

        When tracing is on, each record has a `process <topic>` span, child of the record's
        `traceparent`, open until the batch is settled; the emails planned from the record
        continue that span, so the Postmark call that carries them is its child (or links to
        it, for the other records of a Postmark batch)."""
        spans: list[Span] | None = [] if tracing.enabled() else None
        try:
            await self._settle(records, spans)
        except BaseException as exc:
            for span in spans or []:
                tracing.mark_failed(span, exc)
            raise
        finally:
            for span in spans or []:
                span.end()

    async def _settle(self, records: Sequence[Record], spans: list[Span] | None) -> None:
        planned: list[PlannedEmail] = []
        sources: dict[Any, SourceRecord] = {}
        for record in records:
            span = None
            # Whatever fails while reading one record (its headers, value, schema, trace
            # context) sends that record to the dead letters: no record blocks its partition.
            try:
                headers = dict(text_headers(record.headers))
                if spans is not None:
                    span = self._process_span(record, headers)
                    spans.append(span)
                source = read_record(headers, record.value)
                if span is not None:
                    source = replace(
                        source, traceparent=tracing.traceparent_of(span) or source.traceparent
                    )
                plans = plan(source, self.delivery.emails.catalogue)
                kept = SourceRecord.of(record) if plans else None
            except Exception as exc:
                if span is not None:
                    tracing.mark_failed(span, exc)
                why = str(exc) if isinstance(exc, UnreadableEvent) else _unexpected(exc)
                await self._dead_letter(record, why)
                continue
            self.metrics.events.labels(source.event_type).inc()
            planned.extend(plans)
            if kept is not None:
                sources[source.event_id] = kept
        await self.delivery.intake(planned, sources)

    def _process_span(self, record: Record, headers: dict[str, str]) -> Span:
        return tracing.start_process_span(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode(errors="replace") if record.key is not None else None,
            message_id=headers.get("ce_id"),
            parent=headers.get("traceparent"),
            group=self.settings.notifier_group_id,
        )

    async def _dead_letter(self, record: Record, error: str) -> None:
        reason = "unreadable"
        await self.dead_letters.write_raw(
            key=record.key,
            value=record.value,
            headers=[
                *record.headers,
                ("dlq_reason", reason.encode()),
                ("dlq_error", error[:1000].encode()),
                ("dlq_topic", record.topic.encode()),
                ("dlq_partition", str(record.partition).encode()),
                ("dlq_offset", str(record.offset).encode()),
            ],
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

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._lag_updated < _LAG_INTERVAL:
            return
        self._lag_updated = now
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            with contextlib.suppress(Exception):
                position = await consumer.position(tp)
                self.metrics.lag.labels(str(tp.partition)).set(max(0, end - position))
