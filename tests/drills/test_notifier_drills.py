"""Failure drills for the notifier: a real process killed while Postmark holds its answer, a
Postmark that fails, throttles or refuses the token, and a backlog big enough to batch.
Postmark is the project's sandbox, with faults injected through its `/api/faults`."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from postroom.kafka import create_missing_topics
from postroom_cli.embedded import free_port
from tests.support.kafka import registered_record
from tests.support.names import address, unique
from tests.support.postmark import Sandbox, captured, sandbox_client, sandbox_stats
from tests.support.processes import NotifierProcess
from tests.support.settings import POSTMARK_TOKEN, make_notifier_settings
from tests.support.stack import AUTH, api_and_relay, notifier_in_process, register, running_stack
from tests.support.waiting import ready, wait_until

pytestmark = pytest.mark.kafka


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of one Prometheus sample over the series matching `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def notifications(
    notifier: httpx.AsyncClient, email: str, status: str | None = None
) -> list[dict[str, Any]]:
    params = {"email": email} | ({"status": status} if status else {})
    answer = await notifier.get("/v1/notifications", params=params)
    answer.raise_for_status()
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_a_notifier_killed_while_postmark_holds_the_answers_sends_each_once(
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    sandbox_faults: str,
) -> None:
    emails = [address("killed") for _ in range(6)]
    async with (
        api_and_relay(database_url, kafka_bootstrap) as (api, prefix),
        sandbox_client(sandbox) as postmark,
    ):
        # Postmark holds the answers longer than the notifier waits, and the notifier is
        # killed while waiting; its claims expire a second after its wait would have ended.
        settings = make_notifier_settings(
            database_url,
            kafka_bootstrap,
            sandbox.url,
            prefix,
            notifier_port=free_port(),
            postmark_timeout=8.0,
            notifier_lease=9.0,
        )
        await postmark.put("/api/faults", json={"timeout_rate": 1.0, "timeout_ms": 20_000})
        for email in emails:
            await register(api, email)

        async def published() -> bool:
            left = await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            return bool(left == 0)

        # Published before the notifier starts, the events meet it as one batch per partition.
        await wait_until(published, what="the relay to publish the events", within=20)
        first = NotifierProcess(settings)
        second = NotifierProcess(settings, log_path=first.log_path)
        first.start()
        try:

            async def all_captured() -> dict[str, list[dict[str, Any]]] | None:
                found = {email: await captured(postmark, email) for email in emails}
                return found if all(found.values()) else None

            before_kill = await wait_until(
                all_captured, what="Postmark to hold every message", within=30
            )
            first.kill()
            await postmark.delete("/api/faults")
            second.start()
            async with httpx.AsyncClient(base_url=second.url, headers=AUTH, timeout=10) as notifier:
                await wait_until(lambda: ready(notifier), what="the second notifier", within=30)

                async def all_sent() -> list[dict[str, Any]] | None:
                    found = [await notifications(notifier, email, "sent") for email in emails]
                    return [items[0] for items in found] if all(found) else None

                sent = await wait_until(
                    all_sent, what="the second notifier to mark every email sent", within=40
                )
                await asyncio.sleep(1.0)  # a second send would have been captured by now
                after = {email: await captured(postmark, email) for email in emails}
                metrics = (await notifier.get("/metrics")).text
        finally:
            for process in (first, second):
                if process.alive:
                    process.stop()
    assert {email: [m["MessageID"] for m in found] for email, found in after.items()} == {
        email: [found[0]["MessageID"]] for email, found in before_kill.items()
    }
    assert {n["recipient"]: n["message_id"] for n in sent} == {
        email: found[0]["MessageID"] for email, found in before_kill.items()
    }
    assert [n["attempts"] for n in sent] == [1] * len(emails)  # found, never sent again
    assert metric(metrics, "postroom_notifier_reconciled_total") == len(emails), second.log()


async def test_a_postmark_failing_30_percent_of_calls_still_sends_every_email_once(
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    sandbox_faults: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    max_attempts = 10  # 0.3**10: giving up on a message would be a one-in-170,000 event
    recipients: list[str] = []
    injected: dict[int, int] = {}

    async def all_sent() -> bool:
        sent = await db.fetchval("SELECT count(*) FROM notifications WHERE status = 'sent'")
        return bool(sent == len(recipients))

    async with running_stack(
        database_url, kafka_bootstrap, sandbox, notifier_max_attempts=max_attempts
    ) as stack:
        for status in (500, 503, 429):
            await stack.sandbox.put("/api/faults", json={"error_rate": 0.3, "error_status": status})
            before = (await sandbox_stats(stack.sandbox))["errors_injected"]
            phase_users = 0
            injected[status] = 0
            # Bursts of ten users, until at least twenty went out and this status was met
            # a few times (batching makes the number of calls per burst vary).
            while phase_users < 20 or injected[status] < 3:
                assert phase_users < 200, f"{status} was injected only {injected[status]} times"
                for _ in range(10):
                    recipients.append(address(f"flaky{status}"))
                    await register(stack.api, recipients[-1])
                phase_users += 10
                await wait_until(all_sent, what=f"every email sent under {status}s", within=30)
                injected[status] = (await sandbox_stats(stack.sandbox))["errors_injected"] - before
        await asyncio.sleep(0.5)  # a repeated send would have been captured by now
        per_recipient = {to: await stack.messages(to) for to in recipients}
        metrics = (await stack.notifier.get("/metrics")).text
    rows = await db.fetch("SELECT recipient, status, attempts, message_id FROM notifications")

    with capsys.disabled():
        print(f"\n[30% drill] {len(recipients)} emails; errors injected per status {injected}")
    assert {to: len(found) for to, found in per_recipient.items()} == dict.fromkeys(recipients, 1)
    assert sorted(row["recipient"] for row in rows) == sorted(recipients)
    assert {row["status"] for row in rows} == {"sent"}
    assert {row["recipient"]: row["message_id"] for row in rows} == {
        to: found[0]["MessageID"] for to, found in per_recipient.items()
    }
    assert max(row["attempts"] for row in rows) <= max_attempts
    assert max(row["attempts"] for row in rows) >= 2
    assert metric(metrics, "postroom_notifier_retries_total") > 0


async def test_retries_back_off_while_postmark_is_down_and_the_email_goes_out_once(
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    sandbox_faults: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    email = address("backoff")
    outage = 2.0
    # Plenty of attempts: this drill is about the pace of retries, not giving up. Postmark
    # throttles (429): a definite refusal, so nothing waits for a settle window, only backoff.
    async with running_stack(
        database_url, kafka_bootstrap, sandbox, notifier_max_attempts=50
    ) as stack:
        await stack.wait_consuming()
        await stack.sandbox.put("/api/faults", json={"error_rate": 1.0, "error_status": 429})
        calls_before = (await sandbox_stats(stack.sandbox))["calls"]
        await register(stack.api, email)
        call_times: list[float] = []
        seen = calls_before
        deadline = time.monotonic() + 20
        while not call_times or time.monotonic() < call_times[0] + outage:
            calls = (await sandbox_stats(stack.sandbox))["calls"]
            call_times += [time.monotonic()] * (calls - seen)
            seen = calls
            assert time.monotonic() < deadline, "the notifier never called Postmark"
            await asyncio.sleep(0.01)
        await stack.sandbox.delete("/api/faults")
        [sent] = await wait_until(
            lambda: stack.notifications(email=email, status="sent"),
            what="the email to be sent once Postmark is back",
            within=20,
        )
        await asyncio.sleep(0.5)  # a repeated send would have been captured by now
        messages = await stack.messages(email)
        calls = (await sandbox_stats(stack.sandbox))["calls"] - calls_before

    gaps = [later - earlier for earlier, later in itertools.pairwise(call_times)]
    with capsys.disabled():
        shown = [round(gap, 2) for gap in gaps]
        print(f"\n[backoff drill] {len(call_times)} calls in {outage} s, gaps {shown}")
    # Backoff from 0.05 s doubling to a 0.5 s cap allows at most 11 calls in 2 s.
    assert 4 <= len(call_times) <= 12, gaps
    assert sum(gaps[:2]) < sum(gaps[-2:]), gaps
    assert [m["MessageID"] for m in messages] == [sent["message_id"]]
    assert sent["attempts"] == calls  # every call Postmark saw was an attempt on record


async def test_a_refused_server_token_halts_consumption_until_a_good_one_sends_the_backlog(
    database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    before, stuck = address("before"), address("stuck")
    async with (
        api_and_relay(database_url, kafka_bootstrap) as (api, prefix),
        sandbox_client(sandbox) as postmark,
    ):
        good = make_notifier_settings(database_url, kafka_bootstrap, sandbox.url, prefix)
        bad = good.model_copy(update={"postmark_server_token": SecretStr("not-the-server-token")})

        async with notifier_in_process(good) as notifier:
            await register(api, before)
            await wait_until(
                lambda: notifications(notifier, before, "sent"), what="the first email", within=30
            )

        async with notifier_in_process(bad) as notifier:
            await register(api, stuck)

            async def halted() -> httpx.Response | None:
                answer = await notifier.get("/readyz")
                return answer if "consumer-halted" in answer.text else None

            ready = await wait_until(halted, what="the consumer to halt", within=30)
            [pending] = await notifications(notifier, stuck)
            halted_metrics = (await notifier.get("/metrics")).text
        assert await captured(postmark, stuck) == []

        async with notifier_in_process(good) as notifier:
            [sent] = await wait_until(
                lambda: notifications(notifier, stuck, "sent"), what="the backlog", within=30
            )

            async def consumed() -> str | None:
                text = (await notifier.get("/metrics")).text
                return text if metric(text, "postroom_notifier_events_total") else None

            # The retry loop may send the pending email before the consumer has joined the
            # group; the consumer then reads the uncommitted event and sends nothing more.
            metrics = await wait_until(consumed, what="the consumer to catch up", within=30)
            await asyncio.sleep(0.5)  # a repeated send would have been captured by now
            stuck_messages = await captured(postmark, stuck)
            before_messages = await captured(postmark, before)

    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    assert ready.json()["type"] == "urn:postroom:problem:consumer-halted"
    assert "POSTMARK_SERVER_TOKEN" in ready.json()["detail"]
    assert pending["status"] == "pending"  # not failed: nothing was wrong with the email
    assert pending["id"] == sent["id"]
    assert metric(halted_metrics, "postroom_notifier_halted") == 1  # what the alert watches
    assert metric(halted_metrics, "postroom_notifier_failed_total") == 0
    assert metric(halted_metrics, "postroom_notifier_dead_letters_total") == 0
    assert [m["MessageID"] for m in stuck_messages] == [sent["message_id"]]
    assert len(before_messages) == 1
    # The good notifier resumed from the committed offsets: it read only the stuck event.
    assert metric(metrics, "postroom_notifier_events_total", type="user.registered") == 1
    assert metric(metrics, "postroom_notifier_halted") == 0


async def test_a_backlog_of_1200_goes_out_in_batches_of_at_most_500_with_answers_mapped(
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    capsys: pytest.CaptureFixture[str],
) -> None:
    total = 1200
    invalid = [f"{unique('invalid')}@@example..com" for _ in range(5)]
    inactive = [address("inactive") for _ in range(5)]
    refused = {1 + 240 * n: invalid[n] for n in range(5)} | {
        120 + 240 * n: inactive[n] for n in range(5)
    }
    recipients = [refused.get(n) or address("bulk") for n in range(total)]
    good = [to for to in recipients if to not in invalid and to not in inactive]
    settings = make_notifier_settings(database_url, kafka_bootstrap, sandbox.url, unique("t"))

    async with sandbox_client(sandbox) as postmark:
        await postmark.delete("/api/messages")  # the capture list is shared; start it empty
        for to in inactive:
            bounced = await postmark.post(
                "/email",
                headers={"X-Postmark-Server-Token": POSTMARK_TOKEN},
                json={
                    "From": "hello@postroom.test",
                    "To": to,
                    "Subject": "bounce me",
                    "TextBody": "x",
                    "Headers": [{"Name": "X-PM-Bounce-Type", "Value": "HardBounce"}],
                },
            )
            assert bounced.json()["ErrorCode"] == 0
        stats_before = await sandbox_stats(postmark)

        # The whole backlog waits in Kafka before the notifier starts, so it meets full batches.
        await create_missing_topics(
            settings, [settings.topic("user")], client_id="drill-admin", request_timeout=10
        )
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for to in recipients:
                key, value, headers = registered_record(to)
                await producer.send(settings.topic("user"), value=value, key=key, headers=headers)
            await producer.flush()
        finally:
            await producer.stop()

        started = time.monotonic()
        async with notifier_in_process(settings):

            async def settled() -> bool:
                left = await db.fetchval(
                    "SELECT count(*) FROM notifications WHERE status = 'pending'"
                )
                done = await db.fetchval("SELECT count(*) FROM notifications")
                return bool(left == 0 and done == total)

            await wait_until(settled, what="all 1,200 notifications to settle", within=60)
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.5)  # a repeated send would have been captured by now
        stats_after = await sandbox_stats(postmark)
        answer = await postmark.get("/api/messages")
        answer.raise_for_status()
        messages: list[dict[str, Any]] = answer.json()

    rows = {row["recipient"]: row for row in await db.fetch("SELECT * FROM notifications")}
    suppressed = {row["email"] for row in await db.fetch("SELECT email FROM suppressions")}
    batches = Counter(
        {int(size): calls for size, calls in stats_after["batch_sizes"].items()}
    ) - Counter({int(size): calls for size, calls in stats_before["batch_sizes"].items()})
    sent_to = Counter(m["To"] for m in messages if m["Tag"] == "welcome")

    assert sent_to == Counter(good), "every good address exactly once, nothing else"
    assert len(rows) == total
    assert {row["attempts"] for row in rows.values()} == {1}
    for to in good:
        assert rows[to]["status"] == "sent"
    # Each answer went to the message at its position: the MessageIDs match, address by address.
    by_recipient = {m["To"]: m for m in messages if m["Tag"] == "welcome"}
    assert {to: rows[to]["message_id"] for to in good} == {
        to: by_recipient[to]["MessageID"] for to in good
    }
    for to in invalid:
        assert rows[to]["status"] == "failed"
        assert "300" in rows[to]["last_error"]
        assert rows[to]["attempts"] == 1
    for to in inactive:
        assert rows[to]["status"] == "suppressed"
        assert "inactive" in rows[to]["last_error"].lower()
    assert suppressed == {to.lower() for to in inactive}

    assert batches, "no batch call reached the sandbox"
    assert max(batches) <= 500, batches
    assert sum(size * calls for size, calls in batches.items()) == total, batches
    assert max(batches) >= 100, f"the backlog went out in small calls: {batches}"
    with capsys.disabled():
        sizes = dict(sorted(batches.items()))
        print(f"\n[batch drill] {total} events settled in {elapsed:.1f} s; batch sizes {sizes}")
