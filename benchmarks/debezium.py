"""The relay and Debezium side by side, in one run, on one PostgreSQL and one broker.

    python -m benchmarks.debezium [--rows 100000] [--rate 500] [--seconds 20]

For each publisher in turn (a `postroom relay` process; Kafka Connect with Debezium, as
`deploy/debezium` configures it), running and idle, on a topic of its own:

`drain`: `rows` outbox rows are committed in one burst (COPY, 10,000 rows a transaction) and
counted on Kafka as they arrive. Events/s run from the first record to the last, both by the
broker's clock (the topics stamp LogAppendTime); "after commit" is the time from the burst's
last COMMIT to the last record.

`latency`: `rate` events a second, one per transaction, through the outbox writer, for
`seconds`; per event, from its COMMIT returning to the broker appending its record, p50 and
p99 (one machine, one clock; the broker's is in milliseconds).

The outbox is emptied between publishers. Apache Kafka is required (Kafka Connect's producer
is idempotent).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.relay import (
    BROKER,
    PARTITIONS,
    SHARDS,
    infrastructure,
    machine,
    payload_for,
    percentile,
    relay_process,
)
from postroom import events
from postroom.outbox import OutboxWriter, shard_of
from postroom.settings import asyncpg_url
from postroom_cli.embedded import DebeziumConnect

BURST_TRANSACTION = 10_000


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    topic,
                    PARTITIONS,
                    1,
                    topic_configs={"message.timestamp.type": "LogAppendTime"},
                )
            ]
        )
    finally:
        await admin.close()


class Arrivals:
    """Reads `topic` from its end as records arrive: the broker's append time per ce_id."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.appended: dict[str, float] = {}  # ce_id -> seconds since the epoch
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(self.topic, p) for p in range(PARTITIONS)])
            await consumer.seek_to_end()
            for p in range(PARTITIONS):
                await consumer.position(TopicPartition(self.topic, p))
            self._ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                for records in batch.values():
                    for m in records:
                        ce_id = dict(m.headers).get("ce_id", b"").decode()
                        self.appended.setdefault(ce_id, m.timestamp / 1000)
        finally:
            await consumer.stop()

    async def __aenter__(self) -> Arrivals:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait_for(self, count: int, within: float) -> None:
        deadline = time.monotonic() + within
        while len(self.appended) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(self.appended)} of {count} records after {within} s")
            await asyncio.sleep(0.05)


async def burst(database_url: str, rows: int) -> float:
    """COPY `rows` outbox rows, BURST_TRANSACTION per transaction; when the last COMMIT
    returned."""
    conn = await asyncpg.connect(database_url)
    users = [uuid.uuid4() for _ in range(rows // 5 + 1)]
    try:
        for start in range(0, rows, BURST_TRANSACTION):
            table = []
            for n in range(start, min(rows, start + BURST_TRANSACTION)):
                user_id = users[n // 5]
                table.append(
                    (
                        uuid.uuid4(),
                        "user",
                        str(user_id),
                        "user.registered",
                        json.dumps(payload_for(user_id, n)),
                        '{"ce_source": "/postroom/api"}',
                        shard_of(str(user_id), SHARDS),
                        events.SOURCE_API,
                    )
                )
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "outbox",
                    records=table,
                    columns=[
                        "event_id",
                        "aggregate_type",
                        "aggregate_id",
                        "event_type",
                        "payload",
                        "headers",
                        "shard",
                        "ce_source",
                    ],
                )
        return time.time()
    finally:
        await conn.close()


async def steady(database_url: str, rate: int, seconds: float) -> tuple[dict[str, float], float]:
    """One event per transaction at `rate` a second; per ce_id, when its COMMIT returned."""
    engine = create_async_engine(asyncpg_url(database_url), pool_size=20, max_overflow=0)
    outbox = OutboxWriter(shards=SHARDS)
    total = int(rate * seconds)
    committed: dict[str, float] = {}
    started = time.perf_counter()

    async def one(n: int) -> None:
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        user_id = uuid.uuid4()
        event = events.Event(
            events.UserRegistered(**{**payload_for(user_id, n), "user_id": user_id}),
            source=events.SOURCE_API,
        )
        async with engine.begin() as conn:
            await outbox.add(conn, event)
        committed[str(event.event_id)] = time.time()

    try:
        await asyncio.gather(*(one(n) for n in range(total)))
        achieved = total / (time.perf_counter() - started)
    finally:
        await engine.dispose()
    return committed, achieved


@contextlib.asynccontextmanager
async def publishing(
    name: str, database_url: str, bootstrap: str, prefix: str
) -> AsyncIterator[None]:
    if name == "relay":
        with relay_process(database_url, bootstrap, prefix):
            await asyncio.sleep(2)  # the relay owns its shards and idles
            yield
        return
    slot = f"bench_{uuid.uuid4().hex[:8]}"
    connect = DebeziumConnect(
        database_url=database_url,
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        overrides={"slot.name": slot, "publication.name": slot},
    )
    started = time.monotonic()
    await asyncio.to_thread(connect.start)
    print(f"Debezium streaming after {time.monotonic() - started:.1f} s", flush=True)
    try:
        yield
    finally:
        await asyncio.to_thread(connect.stop)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
        finally:
            await conn.close()


async def run(args: argparse.Namespace) -> None:
    if BROKER != "kafka":
        raise SystemExit("Kafka Connect needs Apache Kafka: Java 17+ and Maven are required")
    results = []
    with infrastructure(SimpleNamespace(database_url=None, bootstrap=None)) as (
        database_url,
        bootstrap,
    ):
        for name in ("relay", "debezium"):
            conn = await asyncpg.connect(database_url)
            await conn.execute("TRUNCATE outbox")
            await conn.close()
            prefix = f"bench{uuid.uuid4().hex[:6]}"
            topic = f"{prefix}.user"
            await create_topic(bootstrap, topic)
            async with (
                publishing(name, database_url, bootstrap, prefix),
                Arrivals(bootstrap, topic) as arrivals,
            ):
                print(f"{name}: a burst of {args.rows} rows ...", flush=True)
                last_commit = await burst(database_url, args.rows)
                await arrivals.wait_for(args.rows, within=600)
                times = sorted(arrivals.appended.values())
                drain_rate = (len(times) - 1) / (times[-1] - times[0])
                after_commit = times[-1] - last_commit
                arrivals.appended.clear()
                print(f"{name}: {args.rate} events/s for {args.seconds} s ...", flush=True)
                committed, achieved = await steady(database_url, args.rate, args.seconds)
                await arrivals.wait_for(len(committed), within=120)
                lat = sorted(
                    max(0.0, arrivals.appended[ce_id] - at) * 1000
                    for ce_id, at in committed.items()
                )
            results.append((name, drain_rate, after_commit, achieved, lat))
    print(f"\nmachine: {machine()}")
    print("broker: Apache Kafka (deploy/kafka/pom.xml), one node; PostgreSQL: durable")
    print(f"drain: {args.rows} rows in one burst; latency: {args.rate} events/s, one per txn")
    print(
        f"{'publisher':10} {'drain events/s':>15} {'after commit s':>15} "
        f"{'load/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for name, rate, after, achieved, lat in results:
        print(
            f"{name:10} {rate:>15,.0f} {after:>15.2f} {achieved:>8.1f} "
            f"{percentile(lat, 0.5):>8.1f} {percentile(lat, 0.99):>8.1f} {lat[-1]:>8.1f}"
        )
    (_, relay_rate, *_), (_, dbz_rate, *_) = results
    print(f"Debezium / relay drain rate: {dbz_rate / relay_rate:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.debezium",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
