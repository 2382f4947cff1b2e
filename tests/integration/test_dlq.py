"""Operators list and replay the notifier's dead letters."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import create_async_engine

from notifier.dlq import list_dead_letters, replay
from postroom.kafka import create_missing_topics
from postroom.settings import asyncpg_url
from tests.support.names import unique
from tests.support.postmark import Sandbox
from tests.support.processes import settings_env
from tests.support.settings import make_notifier_settings
from tests.support.stack import running_stack

pytestmark = pytest.mark.kafka


async def test_dead_letters_are_listed_and_a_failed_email_is_replayed_once(
    database_url: str, kafka_bootstrap: str, sandbox: Sandbox, sandbox_faults: str
) -> None:
    email = f"{unique('dlq')}@example.com"
    async with running_stack(
        database_url, kafka_bootstrap, sandbox, notifier_max_attempts=2
    ) as stack:
        await stack.wait_consuming()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                stack.settings.topic("user"),
                value=b"not json",
                key=b"k",
                headers=[("ce_id", str(uuid.uuid4()).encode()), ("ce_type", b"user.registered")],
            )
        finally:
            await producer.stop()
        # Postmark down for good: the welcome email fails after its two attempts.
        await stack.sandbox.put("/api/faults", json={"error_rate": 1.0, "error_status": 503})
        await stack.api.post("/v1/users", json={"email": email, "name": "Later"})
        [failed] = await stack.wait_status(email, "failed")
        await stack.sandbox.delete("/api/faults")

        async with asyncio.timeout(20):
            while len(letters := await list_dead_letters(stack.settings)) < 2:
                await asyncio.sleep(0.2)
        assert sorted(letter.reason for letter in letters) == ["delivery-failed", "unreadable"]
        [delivery] = [letter for letter in letters if letter.reason == "delivery-failed"]
        assert delivery.headers["dlq_notification_id"] == failed["id"]
        assert delivery.headers["ce_type"] == "user.registered"
        # The operator's listing, as JSON for a script.
        listing = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "postroom_cli",
            "dlq",
            "list",
            "--json",
            env=settings_env(stack.settings),
            stdout=asyncio.subprocess.PIPE,
        )
        printed, _ = await asyncio.wait_for(listing.communicate(), timeout=60)
        assert listing.returncode == 0
        listed = json.loads(printed)
        assert sorted(letter["reason"] for letter in listed) == ["delivery-failed", "unreadable"]
        assert failed["id"] in {letter["headers"].get("dlq_notification_id") for letter in listed}

        engine = create_async_engine(asyncpg_url(database_url))
        try:
            replayed = await replay(stack.settings, engine, reason="delivery-failed")
            assert (replayed.replayed, replayed.held_back) == (1, 0)
            [sent] = await stack.wait_status(email, "sent")
            assert sent["id"] == failed["id"]
            assert len(await stack.wait_messages(email)) == 1
            # Replayed records are not replayed again.
            assert (await replay(stack.settings, engine, reason="delivery-failed")).replayed == 0
            # The unreadable letter, left by replays of another reason, is still there to
            # replay: it goes back to its topic and is dead-lettered again.
            unreadable = await replay(stack.settings, engine, reason="unreadable")
            assert (unreadable.replayed, unreadable.held_back) == (1, 0)
            async with asyncio.timeout(20):
                while [letter.reason for letter in await list_dead_letters(stack.settings)].count(
                    "unreadable"
                ) < 2:
                    await asyncio.sleep(0.2)
            assert (await replay(stack.settings, engine, reason="unreadable")).replayed == 1
        finally:
            await engine.dispose()
        await asyncio.sleep(0.5)
        assert len(await stack.messages(email)) == 1


async def test_a_replay_from_the_beginning_never_moves_the_replay_offset_back(
    database_url: str, kafka_bootstrap: str
) -> None:
    """Letters of two reasons, all replayed once; then `--from-beginning --reason` replays the
    first and stops at one of the other reason. A plain replay after that finds nothing new:
    the offset stayed past all three."""
    settings = make_notifier_settings(
        database_url, kafka_bootstrap, "http://127.0.0.1:9/", unique("t")
    )
    dlq, back = settings.topic("notifier.dlq"), settings.topic("scratch")
    await create_missing_topics(settings, [dlq, back], client_id="dlq-test")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for reason in ("delivery-failed", "unreadable", "delivery-failed"):
            await producer.send_and_wait(
                dlq,
                value=b"{}",
                key=b"k",
                partition=0,
                headers=[("dlq_reason", reason.encode()), ("dlq_topic", back.encode())],
            )
    finally:
        await producer.stop()
    engine = create_async_engine(asyncpg_url(database_url))
    try:
        first = await replay(settings, engine)
        again = await replay(settings, engine, from_beginning=True, reason="delivery-failed")
        after = await replay(settings, engine)
    finally:
        await engine.dispose()

    assert first.replayed == 3
    assert (again.replayed, again.other_reasons) == (2, 1)
    assert after.replayed == 0
