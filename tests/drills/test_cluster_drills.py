"""Drills against a replicated Apache Kafka cluster: three KRaft nodes on loopback, topics
replicated three times, `min.insync.replicas` 2, the producers' `acks=all` and idempotence
on. A broker dies (SIGKILL) or restarts under real relay and notifier processes: nothing is
lost, each user's events stay in order once repeats are dropped by `ce_id`, no email goes out
twice, and the stall is measured."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from postroom.kafka import create_missing_topics
from postroom_cli.embedded import KafkaCluster, free_port
from tests.support import brokers
from tests.support.kafka import first_occurrences, read_topic
from tests.support.names import address, unique
from tests.support.postmark import Sandbox, captured, sandbox_client
from tests.support.processes import NotifierProcess, RelayProcess
from tests.support.settings import make_notifier_settings, make_relay_settings
from tests.support.stack import AUTH, register
from tests.support.waiting import ready, wait_until
from tests.support.writes import assert_in_version_order, write_versions

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(brokers.kind() != "kafka", reason="a cluster needs Apache Kafka"),
]


@pytest.fixture
async def cluster() -> AsyncIterator[KafkaCluster]:
    nodes = KafkaCluster(3)
    await asyncio.to_thread(nodes.start)
    try:
        yield nodes
    finally:
        await asyncio.to_thread(nodes.discard)


async def leader_of(bootstrap: str, topic: str, partition: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    [found] = [p for p in described["partitions"] if p["partition"] == partition]
    return int(found["leader"])


async def longest_gap(db: asyncpg.Connection, column: str, table: str) -> float:
    """The longest pause, in seconds, between consecutive stamps of `column`."""
    gap = await db.fetchval(
        f"SELECT max(d) FROM (SELECT extract(epoch FROM {column} - lag({column}) "  # noqa: S608
        f"OVER (ORDER BY {column})) AS d FROM {table} WHERE {column} IS NOT NULL) AS t"
    )
    return float(gap or 0.0)


async def test_the_partition_leader_killed_mid_burst_loses_nothing_and_mails_once(
    cluster: KafkaCluster,
    database_url: str,
    db: asyncpg.Connection,
    client: httpx.AsyncClient,
    sandbox: Sandbox,
    sandbox_faults: str,
) -> None:
    bootstrap = cluster.bootstrap_servers
    prefix = unique("t")
    relay_settings = make_relay_settings(
        database_url, bootstrap, kafka_topic_prefix=prefix, kafka_replication_factor=3
    )
    notifier_settings = make_notifier_settings(
        database_url,
        bootstrap,
        sandbox.url,
        prefix,
        notifier_port=free_port(),
        kafka_replication_factor=3,
    )
    topic = relay_settings.topic("user")
    await create_missing_topics(relay_settings, [topic], client_id="cluster-drill")
    users = [uuid.uuid4() for _ in range(200)]
    versions = range(1, 31)  # 6,000 events
    emails = [address("leader") for _ in range(30)]
    relay = RelayProcess(relay_settings)
    notifier = NotifierProcess(notifier_settings)
    relay.start()
    notifier.start()
    try:
        burst = asyncio.create_task(write_versions(database_url, users, versions, pause=0.05))
        for email in emails[:15]:
            await register(client, email)

        async def some_published() -> bool:
            done = await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
            return bool(done >= 1500)

        await wait_until(some_published, what="a quarter of the burst published", within=60)
        victim = await leader_of(bootstrap, topic, 0)
        killed_at = time.monotonic()
        cluster.node(victim).kill()
        for email in emails[15:]:
            await register(client, email)
        written = await burst + len(emails)

        async def drained() -> bool:
            left = await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            return left == 0

        await wait_until(drained, what="every row published", within=120)
        drained_after = time.monotonic() - killed_at
        stall = await longest_gap(db, "published_at", "outbox")
        records = await read_topic(bootstrap, topic, expect=written, timeout=60)
        async with (
            sandbox_client(sandbox) as postmark,
            httpx.AsyncClient(base_url=notifier.url, headers=AUTH, timeout=10) as notifier_api,
        ):
            await wait_until(lambda: ready(notifier_api), what="the notifier", within=60)

            async def all_mailed() -> bool:
                return all([await captured(postmark, email) for email in emails])

            await wait_until(all_mailed, what="every welcome", within=90)
            await asyncio.sleep(1.0)  # a second welcome would have been captured by now
            mailed = {email: len(await captured(postmark, email)) for email in emails}
    finally:
        for process in (relay, notifier):
            if process.alive:
                process.stop()

    kept = first_occurrences(records)
    print(
        f"\n[leader kill drill] node {victim} killed; events {written}, records "
        f"{len(records)}, repeats {len(records) - len(kept)}; longest pause between marks "
        f"{stall:.2f} s; drained {drained_after:.1f} s after the kill"
    )
    assert len(kept) == written
    updates = [r for r in kept if r.headers["ce_type"] == "user.updated"]
    assert_in_version_order(updates, users, versions)
    assert mailed == dict.fromkeys(emails, 1)


async def test_a_broker_restarted_under_three_notifiers_loses_no_email_and_sends_none_twice(
    cluster: KafkaCluster,
    database_url: str,
    db: asyncpg.Connection,
    client: httpx.AsyncClient,
    sandbox: Sandbox,
    sandbox_faults: str,
) -> None:
    bootstrap = cluster.bootstrap_servers
    prefix = unique("t")
    relay_settings = make_relay_settings(
        database_url, bootstrap, kafka_topic_prefix=prefix, kafka_replication_factor=3
    )
    group = unique("notifier")
    notifiers = [
        NotifierProcess(
            make_notifier_settings(
                database_url,
                bootstrap,
                sandbox.url,
                prefix,
                notifier_port=free_port(),
                notifier_group_id=group,
                kafka_replication_factor=3,
            )
        )
        for _ in range(3)
    ]
    await create_missing_topics(
        relay_settings, [relay_settings.topic("user")], client_id="cluster-drill"
    )
    relay = RelayProcess(relay_settings)
    relay.start()
    for notifier in notifiers:
        notifier.start()
    emails: list[str] = []
    try:
        async with sandbox_client(sandbox) as postmark:
            for notifier in notifiers:
                async with httpx.AsyncClient(
                    base_url=notifier.url, headers=AUTH, timeout=10
                ) as api:
                    await wait_until(lambda api=api: ready(api), what="a notifier", within=60)
            stop = asyncio.Event()

            async def keep_registering() -> None:
                while not stop.is_set():
                    email = address("restart")
                    await register(client, email)
                    emails.append(email)
                    await asyncio.sleep(0.05)

            writer = asyncio.create_task(keep_registering())
            await asyncio.sleep(3)
            victim = cluster.node(2)
            restarted_at = time.monotonic()
            await asyncio.to_thread(victim.stop)
            await asyncio.to_thread(victim.start)
            restart_took = time.monotonic() - restarted_at
            await asyncio.sleep(3)
            stop.set()
            await writer

            async def all_mailed() -> bool:
                return all([await captured(postmark, email) for email in emails])

            await wait_until(all_mailed, what="every welcome", within=120)
            await asyncio.sleep(1.0)
            mailed = {email: len(await captured(postmark, email)) for email in emails}
        stall = await longest_gap(db, "sent_at", "notifications")
    finally:
        for process in (relay, *notifiers):
            if process.alive:
                process.stop()

    print(
        f"\n[broker restart drill] {len(emails)} sign-ups; node 2 down and back in "
        f"{restart_took:.1f} s; longest pause between sends {stall:.2f} s; "
        f"welcomes {sum(mailed.values())}"
    )
    assert len(emails) > 50
    assert mailed == dict.fromkeys(emails, 1)


async def group_coordinator(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return int(await admin.find_coordinator(group))
    finally:
        await admin.close()


async def test_the_group_coordinator_killed_during_a_rebalance_loses_no_email_sends_none_twice(
    cluster: KafkaCluster,
    database_url: str,
    db: asyncpg.Connection,
    client: httpx.AsyncClient,
    sandbox: Sandbox,
    sandbox_faults: str,
) -> None:
    bootstrap = cluster.bootstrap_servers
    prefix = unique("t")
    relay_settings = make_relay_settings(
        database_url, bootstrap, kafka_topic_prefix=prefix, kafka_replication_factor=3
    )
    group = unique("notifier")
    notifiers = [
        NotifierProcess(
            make_notifier_settings(
                database_url,
                bootstrap,
                sandbox.url,
                prefix,
                notifier_port=free_port(),
                notifier_group_id=group,
                kafka_replication_factor=3,
            )
        )
        for _ in range(3)
    ]
    await create_missing_topics(
        relay_settings, [relay_settings.topic("user")], client_id="cluster-drill"
    )
    relay = RelayProcess(relay_settings)
    relay.start()
    for notifier in notifiers[:2]:
        notifier.start()
    emails: list[str] = []
    stop = asyncio.Event()

    async def keep_registering() -> None:
        while not stop.is_set():
            email = address("coordinator")
            await register(client, email)
            emails.append(email)
            await asyncio.sleep(0.05)

    try:
        async with sandbox_client(sandbox) as postmark:
            for notifier in notifiers[:2]:
                async with httpx.AsyncClient(
                    base_url=notifier.url, headers=AUTH, timeout=10
                ) as api:
                    await wait_until(lambda api=api: ready(api), what="a notifier", within=60)
            writer = asyncio.create_task(keep_registering())
            await asyncio.sleep(3)
            coordinator = await group_coordinator(bootstrap, group)
            notifiers[2].start()  # a third member: the group rebalances
            await asyncio.sleep(1.0)  # while it joins
            killed_at = time.monotonic()
            cluster.node(coordinator).kill()
            async with httpx.AsyncClient(
                base_url=notifiers[2].url, headers=AUTH, timeout=10
            ) as api:
                await wait_until(lambda: ready(api), what="the third notifier", within=90)
            joined_after = time.monotonic() - killed_at
            await asyncio.sleep(3)
            stop.set()
            await writer

            async def all_mailed() -> bool:
                return all([await captured(postmark, email) for email in emails])

            await wait_until(all_mailed, what="every welcome", within=120)
            await asyncio.sleep(1.0)
            mailed = {email: len(await captured(postmark, email)) for email in emails}
        stall = await longest_gap(db, "sent_at", "notifications")
        revoked = sum(notifier.log().count("partitions revoked") for notifier in notifiers)
    finally:
        stop.set()
        for process in (relay, *notifiers):
            if process.alive:
                process.stop()

    print(
        f"\n[coordinator kill drill] node {coordinator} (the group's coordinator) killed while a "
        f"third notifier joined; {len(emails)} sign-ups; third notifier ready "
        f"{joined_after:.1f} s after the kill; {revoked} revocations logged; longest pause "
        f"between sends {stall:.2f} s; welcomes {sum(mailed.values())}"
    )
    assert mailed == dict.fromkeys(emails, 1)


async def test_a_cluster_without_quorum_for_30_s_is_survived_without_a_restart(
    cluster: KafkaCluster,
    database_url: str,
    db: asyncpg.Connection,
    client: httpx.AsyncClient,
    sandbox: Sandbox,
    sandbox_faults: str,
) -> None:
    """Two of the three nodes frozen (SIGSTOP) for 30 s: the quorum and most leaders are gone.
    The relay and the notifier say they are not ready meanwhile, and carry on by themselves
    once the nodes come back: every sign-up's welcome once, every event on Kafka."""
    bootstrap = cluster.bootstrap_servers
    prefix = unique("t")
    relay_settings = make_relay_settings(
        database_url,
        bootstrap,
        kafka_topic_prefix=prefix,
        kafka_replication_factor=3,
        relay_metrics_port=free_port(),
        relay_send_timeout=5.0,
    )
    notifier_settings = make_notifier_settings(
        database_url,
        bootstrap,
        sandbox.url,
        prefix,
        notifier_port=free_port(),
        kafka_replication_factor=3,
    )
    topic = relay_settings.topic("user")
    await create_missing_topics(relay_settings, [topic], client_id="cluster-drill")
    relay = RelayProcess(relay_settings)
    notifier = NotifierProcess(notifier_settings)
    relay.start()
    notifier.start()
    relay_url = f"http://127.0.0.1:{relay_settings.relay_metrics_port}"
    emails: list[str] = []
    stop = asyncio.Event()
    readiness: dict[str, set[int]] = {"relay": set(), "notifier": set()}

    async def keep_registering() -> None:
        while not stop.is_set():
            email = address("quorum")
            await register(client, email)
            emails.append(email)
            await asyncio.sleep(0.1)

    async def watch(name: str, url: str, until: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=2) as http:
            while not until.is_set():
                with contextlib.suppress(httpx.TransportError):
                    readiness[name].add((await http.get("/readyz")).status_code)
                await asyncio.sleep(0.25)

    try:
        async with (
            sandbox_client(sandbox) as postmark,
            httpx.AsyncClient(base_url=notifier.url, headers=AUTH, timeout=10) as notifier_api,
            httpx.AsyncClient(base_url=relay_url, timeout=10) as relay_api,
        ):
            await wait_until(lambda: ready(notifier_api), what="the notifier", within=60)
            await wait_until(lambda: ready(relay_api), what="the relay", within=60)
            pids = (
                relay.process.pid if relay.process else 0,
                notifier.process.pid if notifier.process else 0,
            )
            writer = asyncio.create_task(keep_registering())
            await asyncio.sleep(3)
            frozen = [cluster.node(1), cluster.node(2)]
            outage = asyncio.Event()
            watchers = [
                asyncio.create_task(watch("relay", relay_url, outage)),
                asyncio.create_task(watch("notifier", notifier.url, outage)),
            ]
            for node in frozen:
                assert node.pid is not None
                os.kill(node.pid, signal.SIGSTOP)
            await asyncio.sleep(30)
            for node in frozen:
                assert node.pid is not None
                os.kill(node.pid, signal.SIGCONT)
            outage.set()
            await asyncio.gather(*watchers)
            back_at = time.monotonic()
            await wait_until(lambda: ready(relay_api), what="the relay ready again", within=90)
            relay_back = time.monotonic() - back_at
            await wait_until(
                lambda: ready(notifier_api), what="the notifier ready again", within=90
            )
            notifier_back = time.monotonic() - back_at
            await asyncio.sleep(2)
            stop.set()
            await writer

            async def drained() -> bool:
                left = await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                return left == 0

            await wait_until(drained, what="every row published", within=120)

            async def all_mailed() -> bool:
                return all([await captured(postmark, email) for email in emails])

            await wait_until(all_mailed, what="every welcome", within=120)
            await asyncio.sleep(1.0)
            mailed = {email: len(await captured(postmark, email)) for email in emails}
            same_processes = (
                pids
                == (
                    relay.process.pid if relay.process else 0,
                    notifier.process.pid if notifier.process else 0,
                )
                and relay.alive
                and notifier.alive
            )
    finally:
        stop.set()
        for node in cluster.nodes:
            if node.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGCONT)
        for process in (relay, notifier):
            if process.alive:
                process.stop()

    written = await db.fetchval("SELECT count(*) FROM outbox WHERE aggregate_type = 'user'")
    records = await read_topic(bootstrap, topic, expect=written, timeout=60)
    print(
        f"\n[quorum drill] nodes 1 and 2 frozen 30 s; {len(emails)} sign-ups; /readyz during "
        f"the outage: relay {sorted(readiness['relay'])}, notifier "
        f"{sorted(readiness['notifier'])}; ready again {relay_back:.1f} s (relay) and "
        f"{notifier_back:.1f} s (notifier) after the nodes came back"
    )
    assert same_processes  # recovered without a restart
    assert 503 in readiness["relay"]
    assert 503 in readiness["notifier"]
    assert len(first_occurrences(records)) == written
    assert mailed == dict.fromkeys(emails, 1)
