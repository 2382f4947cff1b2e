"""Drills for "erased means never" (invariant 10): once a user is deleted, nothing addressed to
them goes out but the goodbye, whatever brings their emails back: the operator's dead-letter
replay after a Postmark outage, a record read again (a redelivery, a notifier that was down),
a retry still pending at the deletion. Every drill counts what the sandbox captured for the
deleted user's address, and what Postroom keeps of it."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from notifier.settings import NotifierSettings
from postroom_cli.embedded import free_port
from tests.support.kafka import read_topic
from tests.support.names import address
from tests.support.postmark import Sandbox, captured, sandbox_client
from tests.support.processes import NotifierProcess, settings_env
from tests.support.settings import make_notifier_settings
from tests.support.stack import AUTH, api_and_relay, running_stack
from tests.support.waiting import ready, wait_until

pytestmark = pytest.mark.kafka

OUTAGE = {"error_rate": 1.0, "error_status": 503}


async def create_user(api: httpx.AsyncClient, email: str) -> str:
    answer = await api.post("/v1/users", json={"email": email, "name": "Drill"})
    assert answer.status_code == 201, answer.text
    user_id: str = answer.json()["id"]
    return user_id


async def delete_user(api: httpx.AsyncClient, user_id: str) -> None:
    answer = await api.delete(f"/v1/users/{user_id}")
    assert answer.status_code == 204, answer.text


async def suppress(notifier: httpx.AsyncClient, email: str) -> None:
    answer = await notifier.post("/v1/suppressions", json={"email": email})
    assert answer.status_code == 201, answer.text


async def row_of(db: asyncpg.Connection, user_id: str, template: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT id, status, recipient, source::text AS source, last_error FROM notifications "
        "WHERE user_id = $1::uuid AND template = $2",
        user_id,
        template,
    )


async def settled(db: asyncpg.Connection, user_id: str, template: str, *not_: str) -> bool:
    """The row is there and has left the given statuses (and pending)."""
    row = await row_of(db, user_id, template)
    return row is not None and row["status"] not in ("pending", *not_)


async def replay_dead_letters(settings: NotifierSettings) -> str:
    """`postroom dlq replay`, as the operator runs it after an outage; its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "postroom_cli",
        "dlq",
        "replay",
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    printed, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, printed.decode()
    return printed.decode()


async def outbox_end(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox"))


async def events_naming(db: asyncpg.Connection, email: str, *, after: int = 0) -> list[str]:
    """The `email.*` events of notifications in the outbox (after row `after`) that name
    `email`."""
    rows = await db.fetch(
        "SELECT event_type, payload->>'template' AS template FROM outbox "
        "WHERE aggregate_type = 'email' AND payload->>'notification_id' IS NOT NULL "
        "AND lower(payload->>'email') = lower($1) AND id > $2 ORDER BY id",
        email,
        after,
    )
    return [f"{r['event_type']}:{r['template']}" for r in rows]


@pytest.mark.parametrize(
    "goodbye_in_outage", [False, True], ids=["goodbye-sent", "goodbye-dead-lettered-too"]
)
async def test_a_replay_after_an_outage_sends_nothing_to_a_user_deleted_and_suppressed_since(
    goodbye_in_outage: bool,
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    sandbox_faults: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Postmark is down: two welcomes are dead-lettered. One user is deleted (their goodbye
    goes out, or is dead-lettered too while the outage lasts) and the address is suppressed.
    Postmark comes back and the operator replays the dead letters, the documented step: the
    other user's welcome goes out; nothing more goes to the deleted user's address."""
    gone, kept = address("erased"), address("kept")
    async with running_stack(
        database_url, kafka_bootstrap, sandbox, notifier_max_attempts=2
    ) as stack:
        await stack.wait_consuming()
        await stack.sandbox.put("/api/faults", json=OUTAGE)
        gone_id, kept_id = await create_user(stack.api, gone), await create_user(stack.api, kept)
        for user_id in (gone_id, kept_id):
            await wait_until(
                lambda u=user_id: settled(db, u, "welcome"), what="a dead letter", within=60
            )
        if not goodbye_in_outage:
            await stack.sandbox.delete("/api/faults")
        deleted_after = await outbox_end(db)
        await delete_user(stack.api, gone_id)
        await wait_until(
            lambda: settled(db, gone_id, "goodbye"), what="the goodbye to settle", within=60
        )
        await suppress(stack.notifier, gone)
        await stack.sandbox.delete("/api/faults")
        before = await captured(stack.sandbox, gone)

        printed = await replay_dead_letters(stack.settings)
        await wait_until(
            lambda: settled(db, kept_id, "welcome", "failed"),
            what="the kept user's welcome",
            within=60,
        )
        if goodbye_in_outage:
            await wait_until(
                lambda: settled(db, gone_id, "goodbye", "failed"), what="the goodbye", within=60
            )
        await asyncio.sleep(1.0)  # a send would have been captured by now
        after = await captured(stack.sandbox, gone)
        welcome = await row_of(db, gone_id, "welcome")
        kept_welcome = await row_of(db, kept_id, "welcome")
        named = await events_naming(db, gone, after=deleted_after)
        registered = [
            record
            for record in await read_topic(kafka_bootstrap, stack.settings.topic("user"), expect=3)
            if record.headers["ce_type"] == "user.registered" and record.value["email"] == gone
        ]

    new = sorted(m["Tag"] for m in after if m["MessageID"] not in {b["MessageID"] for b in before})
    with capsys.disabled():
        case = "goodbye dead-lettered" if goodbye_in_outage else "goodbye sent"
        print(
            f"\n[erasure replay drill, {case}] to the deleted user before the suppression: "
            f"{sorted(m['Tag'] for m in before)}; after it: {new}; {printed.strip()!r}"
        )
    assert new == [], "mailed a deleted user's suppressed address"
    assert [m["Tag"] for m in before] == ([] if goodbye_in_outage else ["goodbye"])
    assert welcome is not None
    assert kept_welcome is not None
    assert welcome["status"] == "failed"  # given up in the outage, and left so by the replay
    assert (welcome["recipient"], welcome["source"]) == ("", None)
    assert kept_welcome["status"] == "sent"
    assert "held back 1 record(s)" in printed
    # The replay put no record naming the address back on Kafka, and no event names it but
    # the goodbye's.
    assert len(registered) == 1
    assert all(event.endswith(":goodbye") for event in named), named


async def test_a_record_read_again_after_the_deletion_stores_and_sends_nothing(
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    sandbox_faults: str,
) -> None:
    """The same outage, the same deletion and suppression; then, instead of a replay, the
    welcome's record is delivered to the notifier again (a redelivery: offsets reset, a
    producer's retry): nothing is sent, and the erased address is not stored again."""
    gone = address("redelivered")
    async with running_stack(
        database_url, kafka_bootstrap, sandbox, notifier_max_attempts=2
    ) as stack:
        await stack.wait_consuming()
        await stack.sandbox.put("/api/faults", json=OUTAGE)
        gone_id = await create_user(stack.api, gone)
        await wait_until(lambda: settled(db, gone_id, "welcome"), what="a dead letter", within=60)
        await stack.sandbox.delete("/api/faults")
        await delete_user(stack.api, gone_id)
        await wait_until(lambda: settled(db, gone_id, "goodbye"), what="the goodbye", within=60)
        await suppress(stack.notifier, gone)
        before = await captured(stack.sandbox, gone)

        [record] = [
            r
            for r in await read_topic(kafka_bootstrap, stack.settings.topic("user"), expect=2)
            if r.headers["ce_type"] == "user.registered" and r.value["email"] == gone
        ]
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            again = await producer.send_and_wait(
                record.topic,
                value=json.dumps(record.value).encode(),
                key=record.key.encode(),
                headers=[(k, v.encode()) for k, v in record.headers.items()],
            )
        finally:
            await producer.stop()
        await wait_until(
            lambda: committed_past(stack.settings, again.partition, again.offset),
            what="the notifier to take the record read again",
            within=30,
        )
        await asyncio.sleep(1.0)  # a send would have been captured by now
        after = await captured(stack.sandbox, gone)
        welcome = await row_of(db, gone_id, "welcome")

    assert [m["MessageID"] for m in after] == [m["MessageID"] for m in before]
    assert [m["Tag"] for m in after] == ["goodbye"]
    assert welcome is not None
    assert (welcome["status"], welcome["recipient"]) == ("failed", "")
    assert welcome["source"] is None, "the erased address was stored again"


async def committed_past(settings: NotifierSettings, partition: int, offset: int) -> bool:
    """Whether the notifiers' group has committed past `offset` on the user topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.notifier_group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        done = await consumer.committed(TopicPartition(settings.topic("user"), partition))
    finally:
        await consumer.stop()
    return done is not None and done > offset


async def test_a_notifier_that_was_down_through_a_signup_and_deletion_sends_only_the_goodbye(
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    sandbox_faults: str,
) -> None:
    """The notifier (a real process) is down while a user registers and is deleted: when it
    starts it reads `user.registered` for a user deleted since. Only the goodbye goes out;
    another user's welcome, read in the same start, shows the notifier is working."""
    gone, kept = address("late-read"), address("late-kept")
    async with (
        api_and_relay(database_url, kafka_bootstrap) as (api, prefix),
        sandbox_client(sandbox) as postmark,
    ):
        gone_id = await create_user(api, gone)
        await create_user(api, kept)
        await delete_user(api, gone_id)

        async def published() -> bool:
            left = await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            return bool(left == 0)

        await wait_until(published, what="the relay to publish the events", within=20)
        settings = make_notifier_settings(
            database_url, kafka_bootstrap, sandbox.url, prefix, notifier_port=free_port()
        )
        notifier = NotifierProcess(settings)
        notifier.start()
        try:
            async with httpx.AsyncClient(base_url=notifier.url, headers=AUTH, timeout=10) as http:
                await wait_until(lambda: ready(http), what="the notifier", within=30)

                async def delivered() -> dict[str, list[dict[str, Any]]] | None:
                    found = {to: await captured(postmark, to) for to in (gone, kept)}
                    return found if all(found.values()) else None

                await wait_until(delivered, what="the goodbye and the other welcome", within=30)
                await wait_until(
                    lambda: settled(db, gone_id, "welcome"), what="the welcome", within=30
                )
                await asyncio.sleep(1.0)  # a send would have been captured by now
                sent_to_gone = await captured(postmark, gone)
        finally:
            notifier.stop()
    welcome = await row_of(db, gone_id, "welcome")

    assert sorted(m["Tag"] for m in sent_to_gone) == ["goodbye"], notifier.log()[-3000:]
    assert welcome is not None
    assert welcome["status"] == "suppressed"
    assert welcome["last_error"].startswith("user deleted")
    assert (welcome["recipient"], welcome["source"]) == ("", None)
    assert await events_naming(db, gone) == ["email.sent:goodbye"]


async def test_a_welcome_still_retrying_when_its_user_is_deleted_is_never_sent(
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    sandbox_faults: str,
) -> None:
    """Postmark is down and the welcome keeps retrying; the user is deleted meanwhile. When
    Postmark is back the goodbye goes out, once, and the welcome never does."""
    gone = address("retrying")
    async with running_stack(
        database_url, kafka_bootstrap, sandbox, notifier_max_attempts=50
    ) as stack:
        await stack.wait_consuming()
        await stack.sandbox.put("/api/faults", json=OUTAGE)
        gone_id = await create_user(stack.api, gone)

        async def retried() -> bool:
            row = await db.fetchrow(
                "SELECT attempts FROM notifications WHERE user_id = $1::uuid", gone_id
            )
            return bool(row and row["attempts"] >= 2)

        await wait_until(retried, what="the welcome to be retried", within=30)
        await delete_user(stack.api, gone_id)
        await stack.sandbox.delete("/api/faults")
        await wait_until(lambda: settled(db, gone_id, "goodbye"), what="the goodbye", within=30)
        await wait_until(lambda: settled(db, gone_id, "welcome"), what="the welcome", within=30)
        await asyncio.sleep(1.0)  # a send would have been captured by now
        sent_to_gone = await captured(stack.sandbox, gone)
        welcome = await row_of(db, gone_id, "welcome")
        goodbye = await row_of(db, gone_id, "goodbye")

    assert [m["Tag"] for m in sent_to_gone] == ["goodbye"]
    assert welcome is not None
    assert goodbye is not None
    assert welcome["status"] == "suppressed"
    assert welcome["last_error"].startswith("user deleted")
    assert (goodbye["status"], goodbye["recipient"]) == ("sent", "")
    assert await events_naming(db, gone) == ["email.sent:goodbye"]
