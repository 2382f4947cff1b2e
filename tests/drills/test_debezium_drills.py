"""Cutting over from the relay to Debezium and back while users keep changing, with real
processes: a relay, a notifier, Kafka Connect with Debezium (docs/debezium.md, "Cutting
over"). Every event reaches Kafka at least once, each user's events in order once repeats are
dropped by `ce_id`, and every welcome goes out exactly once."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from postroom import events
from postroom.kafka import create_missing_topics
from postroom.outbox import add_event
from postroom.settings import asyncpg_url
from postroom_cli.embedded import free_port
from tests.support import brokers
from tests.support.debezium import streaming
from tests.support.kafka import first_occurrences, read_topic
from tests.support.names import address, unique
from tests.support.postmark import Sandbox, captured, sandbox_client
from tests.support.processes import NotifierProcess, RelayProcess
from tests.support.settings import make_notifier_settings, make_relay_settings
from tests.support.stack import AUTH, register
from tests.support.waiting import ready, wait_until

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(
        brokers.kind() != "kafka", reason="Kafka Connect needs Apache Kafka, not Tansu"
    ),
]


async def test_cutover_to_debezium_and_back_loses_nothing_keeps_order_and_mails_once(
    database_url: str,
    kafka_bootstrap: str,
    db: asyncpg.Connection,
    client: httpx.AsyncClient,
    sandbox: Sandbox,
    sandbox_faults: str,
) -> None:
    prefix = unique("t")
    relay_settings = make_relay_settings(database_url, kafka_bootstrap, kafka_topic_prefix=prefix)
    notifier_settings = make_notifier_settings(
        database_url, kafka_bootstrap, sandbox.url, prefix, notifier_port=free_port()
    )
    topic = relay_settings.topic("user")
    await create_missing_topics(relay_settings, [topic], client_id="cutover-drill")
    users = [uuid.uuid4() for _ in range(20)]
    emails: list[str] = []
    written = 0
    phase = "relay"
    stop = asyncio.Event()

    async def keep_writing() -> None:
        """Every 50 ms: one transaction with a new version of every user, and a sign-up."""
        nonlocal written
        engine = create_async_engine(asyncpg_url(database_url))
        try:
            for version in itertools.count(1):
                if stop.is_set():
                    return
                async with engine.begin() as conn:
                    for user_id in users:
                        await add_event(
                            conn,
                            events.Event(
                                events.UserUpdated(
                                    user_id=user_id,
                                    version=version,
                                    email="cutover@example.com",
                                    name=phase,
                                    changed=["name"],
                                )
                            ),
                            shards=relay_settings.relay_shards,
                        )
                written += len(users)
                email = address(f"cutover-{phase}")
                await register(client, email)
                emails.append(email)
                written += 1
                await asyncio.sleep(0.05)
        finally:
            await engine.dispose()

    relay = RelayProcess(relay_settings)
    notifier = NotifierProcess(notifier_settings)
    relay.start()
    notifier.start()
    writer = asyncio.create_task(keep_writing())
    figures: dict[str, float] = {}
    try:
        await asyncio.sleep(3)
        phase = "both"
        started = time.monotonic()
        async with streaming(database_url, kafka_bootstrap, prefix) as debezium:
            figures["debezium_start_s"] = time.monotonic() - started
            await asyncio.sleep(2)
            relay.stop()  # cut over: Debezium alone
            phase = "debezium"
            await asyncio.sleep(3)
            phase = "back"
            relay = RelayProcess(relay_settings)
            relay.start()  # and back: the relay first, then Debezium stops
            await asyncio.sleep(2)
            await asyncio.to_thread(debezium.stop)
            phase = "relay-again"
            await asyncio.sleep(2)
        stop.set()
        await writer

        async def drained() -> bool:
            left = await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            return left == 0

        await wait_until(drained, what="the relay to publish every row", within=60)
        records = await read_topic(kafka_bootstrap, topic, expect=written, timeout=60)
        async with (
            sandbox_client(sandbox) as postmark,
            httpx.AsyncClient(base_url=notifier.url, headers=AUTH, timeout=10) as notifier_api,
        ):
            await wait_until(lambda: ready(notifier_api), what="the notifier", within=30)

            async def all_mailed() -> bool:
                return all([await captured(postmark, email) for email in emails])

            await wait_until(all_mailed, what="every welcome", within=90)
            await asyncio.sleep(1.0)  # a second welcome would have been captured by now
            mailed = {email: len(await captured(postmark, email)) for email in emails}
    finally:
        stop.set()
        if not writer.done():
            writer.cancel()
        for process in (relay, notifier):
            if process.alive:
                process.stop()

    kept = first_occurrences(records)
    phases = {email.split("-")[1] for email in emails}
    print(
        f"\n[cutover drill] events {written}, records {len(records)}, "
        f"repeats {len(records) - len(kept)}, welcomes {sum(mailed.values())} for "
        f"{len(emails)} sign-ups, Debezium streaming after {figures['debezium_start_s']:.1f} s"
    )
    assert {"relay", "both", "debezium", "back"} <= phases  # writes in every phase
    assert len(kept) == written  # every event at least once
    versions: dict[str, list[int]] = {}
    for record in kept:
        if record.headers["ce_type"] == "user.updated":
            versions.setdefault(record.key, []).append(record.value["version"])
    for user_id in users:
        seen = versions[str(user_id)]
        assert seen == sorted(seen), user_id
        assert seen == list(range(1, len(seen) + 1)), user_id
    assert mailed == dict.fromkeys(emails, 1)
