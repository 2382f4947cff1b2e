"""Failure drills for the relay, with real processes killed and a real broker cut off."""

from __future__ import annotations

import asyncio
import random
import uuid

import asyncpg
import pytest

from outbox_relay import admin
from postroom_cli.embedded import free_port
from tests.support import brokers
from tests.support.kafka import first_occurrences, read_topic
from tests.support.processes import RelayProcess
from tests.support.settings import make_relay_settings
from tests.support.tcp_proxy import TcpProxy
from tests.support.writes import assert_in_version_order, write_versions

pytestmark = pytest.mark.kafka


async def pending(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def published(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"))


async def wait_drained(db: asyncpg.Connection, *, within: float) -> None:
    async with asyncio.timeout(within):
        while await pending(db):
            await asyncio.sleep(0.1)


async def test_sigkill_again_and_again_loses_nothing_and_keeps_order(
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_relay_settings(database_url, kafka_bootstrap, relay_batch_size=500)
    users = [uuid.uuid4() for _ in range(500)]
    versions = range(1, 41)  # 500 users x 40 versions = 20,000 events
    relay = RelayProcess(settings)
    relay.start()
    kills = 0

    async def kill_repeatedly(stop: asyncio.Event) -> None:
        nonlocal kills
        rng = random.Random(7)
        watch = await asyncpg.connect(database_url)
        try:
            while not stop.is_set():
                # Each relay publishes something before it dies, however slowly it started
                # (a loaded machine starts Python slower than the kills would come).
                before = await published(watch)
                await asyncio.sleep(rng.uniform(0.4, 1.2))
                while not stop.is_set() and await published(watch) == before:
                    await asyncio.sleep(0.05)
                relay.kill()
                kills += 1
                relay.start()
        finally:
            await watch.close()

    stop = asyncio.Event()
    killer = asyncio.create_task(kill_repeatedly(stop))
    try:
        written = await write_versions(database_url, users, versions, pause=0.05)
        # Keep killing while the backlog drains, then let the last relay finish.
        async with asyncio.timeout(60):
            while await pending(db) > written // 4:
                await asyncio.sleep(0.1)
        stop.set()
        await killer
        await wait_drained(db, within=60)
    finally:
        stop.set()
        if not killer.done():
            killer.cancel()
        if relay.alive:
            relay.stop()

    records = await read_topic(kafka_bootstrap, settings.topic("user"), expect=written, timeout=60)
    kept = first_occurrences(records)
    repeats = len(records) - len(kept)
    with capsys.disabled():
        print(
            f"\n[relay SIGKILL drill] events {written}, kills {kills}, records {len(records)}, "
            f"repeats {repeats}"
        )
    assert written == 20_000
    assert kills >= 3
    assert len(kept) == written
    assert_in_version_order(kept, users, versions)


async def test_a_dead_relays_shards_are_taken_over(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    base = make_relay_settings(database_url, kafka_bootstrap)
    a = RelayProcess(base.model_copy(update={"relay_id": "relay-a"}))
    b = RelayProcess(base.model_copy(update={"relay_id": "relay-b"}))
    a.start()
    b.start()
    try:
        async with asyncio.timeout(30):
            while True:
                owners = {s.owner for s in (await admin.status(base)).shards}
                if owners == {"relay-a", "relay-b"}:
                    break
                await asyncio.sleep(0.1)
        a.kill()
        users = [uuid.uuid4() for _ in range(64)]  # spread over all eight shards
        written = await write_versions(database_url, users, range(1, 4))
        await wait_drained(db, within=20)
        report = await admin.status(base)
    finally:
        for relay in (a, b):
            if relay.alive:
                relay.stop()
    assert [s.owner for s in report.shards] == ["relay-b"] * 8
    records = await read_topic(kafka_bootstrap, base.topic("user"), expect=written)
    assert len(first_occurrences(records)) == written


async def test_an_unreachable_broker_delays_but_loses_nothing(
    db: asyncpg.Connection, database_url: str
) -> None:
    upstream_port, proxy_port = free_port(), free_port()
    # The broker advertises the proxy, so every client connection goes through it.
    broker = brokers.make_broker(port=upstream_port, advertised_port=proxy_port)
    broker.start()
    proxy = TcpProxy(listen_port=proxy_port, upstream_port=upstream_port)
    await proxy.start()
    bootstrap = f"127.0.0.1:{proxy_port}"
    settings = make_relay_settings(
        database_url, bootstrap, relay_backoff_max=2.0, relay_send_timeout=2.0
    )
    relay = RelayProcess(settings)
    relay.start()
    users = [uuid.uuid4() for _ in range(20)]
    try:
        before = await write_versions(database_url, users, range(1, 3))
        await wait_drained(db, within=30)

        await proxy.cut()
        during = await write_versions(database_url, users, range(3, 6))
        await asyncio.sleep(8)
        still_pending = await pending(db)
        survived = relay.alive

        await proxy.restore()
        await wait_drained(db, within=60)
        attempts = await db.fetchval("SELECT max(attempts) FROM outbox")
        records = await read_topic(bootstrap, settings.topic("user"), expect=before + during)
    finally:
        if relay.alive:
            relay.stop()
        await proxy.close()
        broker.discard()
    assert still_pending == during  # nothing marked while Kafka was unreachable
    assert survived
    kept = first_occurrences(records)
    assert len(kept) == before + during
    assert_in_version_order(kept, users, range(1, 6))
    assert attempts <= 12, f"a row was tried {attempts} times in an 8 s outage: a busy loop"
