"""Drills for send-once under what production does to it (DESIGN's failure table): notifiers
joining and leaving the group while a batch is being sent, Postmark's answers lost while its
search index lags behind, and the dead-letter topic out of reach when an email is given up.
Every drill counts what the sandbox captured: each notification exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from notifier.dlq import list_dead_letters
from postroom.kafka import create_missing_topics
from postroom_cli.embedded import free_port
from tests.support import brokers
from tests.support.kafka import registered_record
from tests.support.names import address, unique
from tests.support.postmark import Sandbox, captured, sandbox_client, sandbox_stats
from tests.support.processes import NotifierProcess
from tests.support.settings import make_notifier_settings
from tests.support.stack import api_and_relay, notifier_in_process, register, running_stack
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import ready, wait_until

pytestmark = pytest.mark.kafka


async def statuses(db: asyncpg.Connection) -> Counter[str]:
    rows = await db.fetch("SELECT status FROM notifications")
    return Counter(row["status"] for row in rows)


async def test_notifiers_joining_and_leaving_mid_batch_send_each_email_once(
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    sandbox_faults: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    total = 12
    emails = [address("rebalance") for _ in range(total)]
    async with (
        api_and_relay(database_url, kafka_bootstrap) as (api, prefix),
        sandbox_client(sandbox) as postmark,
    ):
        base = make_notifier_settings(
            database_url,
            kafka_bootstrap,
            sandbox.url,
            prefix,
            postmark_timeout=15.0,
            notifier_lease=16.0,
            kafka_topic_partitions=6,
        )
        processes = [
            NotifierProcess(base.model_copy(update={"notifier_port": free_port()}))
            for _ in range(3)
        ]
        first, second, third = processes
        # Postmark answers each call after 7 s, longer than the group takes to rebalance: the
        # partitions move while their batches are still waiting for Postmark. (Without claims
        # and the rebalance listener, this sends some emails twice.)
        await postmark.put("/api/faults", json={"latency_ms": 7000})
        first.start()
        second.start()
        try:
            for process in (first, second):
                async with httpx.AsyncClient(base_url=process.url, timeout=5) as client:
                    await wait_until(lambda c=client: ready(c), what="a notifier", within=30)
            calls_before = (await sandbox_stats(postmark))["calls"]
            for email in emails:
                await register(api, email)

            async def sending() -> bool:
                return bool((await sandbox_stats(postmark))["calls"] > calls_before)

            await wait_until(sending, what="the first Postmark call", within=20)
            third.start()  # joins mid-batch: a rebalance
            await asyncio.sleep(1.5)
            second.stop()  # leaves mid-batch: another
            await asyncio.sleep(1.5)
            await postmark.delete("/api/faults")

            async def settled() -> Counter[str] | None:
                found = await statuses(db)
                return found if sum(found.values()) == total and not found["pending"] else None

            final = await wait_until(settled, what="every email to settle", within=90)
            await asyncio.sleep(1.0)  # a second send would have been captured by now
            sent_to = {email: await captured(postmark, email) for email in emails}
            logs = "\n".join(process.log() for process in processes)
        finally:
            for process in processes:
                if process.alive:
                    process.stop()

    with capsys.disabled():
        revoked = logs.count("partitions revoked")
        print(f"\n[rebalance drill] {total} emails, {revoked} revocations logged, {dict(final)}")
    assert {email: len(found) for email, found in sent_to.items()} == dict.fromkeys(emails, 1)
    assert final == Counter({"sent": total})
    assert "partitions revoked" in logs, "the drill never moved a partition"
    assert "IllegalStateError" not in logs


@pytest.mark.parametrize("lost", [1, 2, 3], ids=["one-lost", "two-lost", "three-lost"])
async def test_answers_lost_while_the_search_lags_send_each_email_once(
    lost: int,
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    sandbox_faults: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each attempt's answer is lost; all but the last were lost on the way (nothing accepted),
    the last one after Postmark accepted it, and Postmark's search shows a message only
    2.5 s after accepting it. The settle window (4 s) outlasts the call (1 s) and the lag."""
    emails = [address(f"lost{lost}") for _ in range(4)]
    search_delay_ms = 2500
    async with running_stack(
        database_url,
        kafka_bootstrap,
        sandbox,
        postmark_timeout=1.0,
        notifier_lease=2.0,
        notifier_search_settle=4.0,
        notifier_max_attempts=10,
    ) as stack:
        await stack.wait_consuming()
        await stack.sandbox.put(
            "/api/faults",
            json={
                "timeout_rate": 1.0,
                "timeout_ms": 1500,
                "timeout_accepts": lost == 1,
                "search_delay_ms": search_delay_ms,
            },
        )
        for email in emails:
            await register(stack.api, email)

        async def answered(attempts: int) -> bool:
            """Every email has had `attempts` attempts, and none is waiting for an answer."""
            rows = await db.fetch(
                "SELECT attempts, attempt_open FROM notifications WHERE recipient = ANY($1)",
                emails,
            )
            return len(rows) == len(emails) and all(
                r["attempts"] >= attempts and not r["attempt_open"] for r in rows
            )

        for attempt in range(1, lost):
            await wait_until(lambda a=attempt: answered(a), what=f"attempt {attempt}", within=30)
        if lost > 1:  # the last lost answer comes after Postmark accepted the message
            await stack.sandbox.put("/api/faults", json={"timeout_accepts": True})
        await wait_until(lambda: answered(lost), what=f"attempt {lost}", within=30)
        # Timeouts stop; the search index still lags.
        await stack.sandbox.put("/api/faults", json={"timeout_rate": 0.0})
        started = time.monotonic()
        for email in emails:
            await stack.wait_status(email, "sent", within=30)
        waited = time.monotonic() - started
        await asyncio.sleep(1.0)  # a resend would have been captured by now
        sent_to = {email: await stack.messages(email) for email in emails}
        rows = await db.fetch(
            "SELECT recipient, attempts, message_id FROM notifications WHERE recipient = ANY($1)",
            emails,
        )
        metrics = (await stack.notifier.get("/metrics")).text

    with capsys.disabled():
        print(f"\n[lost answers drill] {lost} lost in a row; sent {waited:.1f} s after the faults")
    assert {email: len(found) for email, found in sent_to.items()} == dict.fromkeys(emails, 1)
    assert {r["recipient"]: r["message_id"] for r in rows} == {
        email: found[0]["MessageID"] for email, found in sent_to.items()
    }
    assert {r["attempts"] for r in rows} == {lost}  # found by the search, never sent again
    assert 'postroom_notifier_searches_total{outcome="found"}' in metrics


async def test_a_dead_letter_waits_for_an_unreachable_topic_and_is_written_once_it_is_back(
    db: asyncpg.Connection,
    database_url: str,
    sandbox: Sandbox,
    sandbox_faults: str,
) -> None:
    upstream_port, proxy_port = free_port(), free_port()
    # The broker advertises the proxy, so every connection of the notifier goes through it.
    broker = brokers.make_broker(port=upstream_port, advertised_port=proxy_port)
    broker.start()
    proxy = TcpProxy(listen_port=proxy_port, upstream_port=upstream_port)
    await proxy.start()
    email = address("deadletter")
    settings = make_notifier_settings(
        database_url,
        f"127.0.0.1:{proxy_port}",
        sandbox.url,
        unique("t"),
        notifier_max_attempts=2,
    )
    try:
        async with sandbox_client(sandbox) as postmark:
            # Postmark throttles every call: a definite refusal, retried, then given up.
            await postmark.put("/api/faults", json={"error_rate": 1.0, "error_status": 429})
            await create_missing_topics(
                settings, [settings.topic("user")], client_id="drill-admin", request_timeout=10
            )
            async with notifier_in_process(settings) as notifier:
                await wait_until(lambda: ready(notifier), what="the notifier", within=30)
                producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{proxy_port}")
                await producer.start()
                try:
                    key, value, headers = registered_record(email)
                    await producer.send_and_wait(
                        settings.topic("user"), value=value, key=key, headers=headers
                    )
                finally:
                    await producer.stop()

                async def tried_once() -> bool:
                    attempts = await db.fetchval(
                        "SELECT attempts FROM notifications WHERE recipient = $1", email
                    )
                    return bool(attempts and attempts >= 1)

                await wait_until(tried_once, what="the first attempt", within=30)
                await proxy.cut()

                async def given_up_in_vain() -> asyncpg.Record | None:
                    row = await db.fetchrow(
                        "SELECT status, attempts, last_error FROM notifications "
                        "WHERE recipient = $1",
                        email,
                    )
                    done = row and row["attempts"] >= 2 and "gave up" in (row["last_error"] or "")
                    return row if done else None

                # The email was given up while the topic was out of reach: still pending.
                waiting = await wait_until(given_up_in_vain, what="a give-up", within=60)
                await asyncio.sleep(2.0)
                still = await db.fetchval(
                    "SELECT status FROM notifications WHERE recipient = $1", email
                )
                await proxy.restore()

                async def failed() -> bool:
                    status = await db.fetchval(
                        "SELECT status FROM notifications WHERE recipient = $1", email
                    )
                    return bool(status == "failed")

                await wait_until(failed, what="the dead letter and the failed status", within=60)
                metrics = (await notifier.get("/metrics")).text
        direct = settings.model_copy(
            update={"kafka_bootstrap_servers": f"127.0.0.1:{upstream_port}"}
        )
        letters = await list_dead_letters(direct)
    finally:
        await proxy.close()
        broker.discard()

    notification = await db.fetchval("SELECT id FROM notifications WHERE recipient = $1", email)
    mine = [
        letter
        for letter in letters
        if letter.headers.get("dlq_notification_id") == str(notification)
    ]
    assert waiting["status"] == "pending"
    assert still == "pending", "nothing is marked failed before its dead letter is written"
    assert len(mine) == 1, [letter.headers for letter in letters]
    assert mine[0].reason == "delivery-failed"
    assert mine[0].headers["ce_type"] == "user.registered"
    assert mine[0].value is not None
    assert email.encode() in mine[0].value
    assert 'postroom_notifier_dead_letters_total{reason="delivery-failed"} 1.0' in metrics
