"""No record blocks its partition: records of every odd kind a producer (or Kafka Connect, for
a null column) may write are on every partition ahead of real registrations, read by a real
notifier process. Readable ones are sent once; the rest go to the dead letters, each with why,
and the emails behind them are not held up."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from notifier.dlq import list_dead_letters
from postroom.kafka import create_missing_topics
from postroom_cli.embedded import free_port
from tests.support.kafka import registered_record
from tests.support.names import address
from tests.support.postmark import Sandbox, captured, sandbox_client
from tests.support.processes import NotifierProcess
from tests.support.settings import make_notifier_settings
from tests.support.stack import AUTH, api_and_relay, register
from tests.support.waiting import ready, wait_until

pytestmark = pytest.mark.kafka

Headers = list[tuple[str, bytes | None]]


def poison() -> dict[str, tuple[bytes | None, Headers, str]]:
    """Each kind of unreadable record: its value, its headers, and what its dead letter says."""
    _, value, headers = registered_record(address("poison"))

    def without(name: str) -> Headers:
        return [(k, v) for k, v in headers if k != name]

    def with_(name: str, changed: bytes | None) -> Headers:
        return [(k, changed if k == name else v) for k, v in headers]

    fresh = [(k, str(uuid.uuid4()).encode() if k == "ce_id" else v) for k, v in headers]
    mismatched = json.dumps({"user_id": "not a uuid", "email": 7}).encode()
    return {
        "null ce_id": (value, with_("ce_id", None), "not a CloudEvent"),
        "missing ce_type": (value, without("ce_type"), "not a CloudEvent"),
        "ce_id not UTF-8": (value, with_("ce_id", b"\xff\xfe\x80"), "not a CloudEvent"),
        "value not UTF-8": (b"\xff\xfe{\x80}", fresh, "not a CloudEvent"),
        "null value": (None, fresh, "not a CloudEvent"),
        "data not an object": (b"[1, 2]", fresh, "not a JSON object"),
        "data not the schema": (mismatched, fresh, "does not match its schema"),
    }


async def test_no_record_however_odd_blocks_its_partition(
    database_url: str, kafka_bootstrap: str, sandbox: Sandbox, sandbox_faults: str
) -> None:
    kinds = poison()
    async with (
        api_and_relay(database_url, kafka_bootstrap) as (api, prefix),
        sandbox_client(sandbox) as postmark,
    ):
        settings = make_notifier_settings(
            database_url, kafka_bootstrap, sandbox.url, prefix, notifier_port=free_port()
        )
        topic = settings.topic("user")
        await create_missing_topics(settings, [topic], client_id="poison-drill")
        partitions = range(settings.kafka_topic_partitions)
        # On every partition: each kind of poison, then a real registration whose traceparent
        # is null (as Kafka Connect writes a null column), readable and so sent.
        nulled = {partition: address("nulled") for partition in partitions}
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for partition in partitions:
                for value, headers, _ in kinds.values():
                    await producer.send_and_wait(
                        topic, value=value, key=b"poison", headers=headers, partition=partition
                    )
                key, value, headers = registered_record(nulled[partition])
                await producer.send_and_wait(
                    topic,
                    value=value,
                    key=key,
                    headers=[*headers, ("traceparent", None)],
                    partition=partition,
                )
        finally:
            await producer.stop()
        # Registrations through the api, behind the poison on whichever partition they land.
        registered = [address("behind") for _ in range(6)]
        for email in registered:
            await register(api, email)

        notifier = NotifierProcess(settings)
        notifier.start()
        try:
            async with httpx.AsyncClient(base_url=notifier.url, headers=AUTH, timeout=10) as client:
                await wait_until(lambda: ready(client), what="the notifier", within=30)
                emails = [*nulled.values(), *registered]

                async def all_sent() -> bool:
                    return all([await captured(postmark, email) for email in emails])

                await wait_until(all_sent, what="every readable record's email", within=60)
                expected = len(kinds) * len(partitions)

                async def all_dead_lettered() -> list[object] | None:
                    letters = await list_dead_letters(settings)
                    return letters if len(letters) >= expected else None

                letters = await wait_until(
                    all_dead_lettered, what="every poison record dead-lettered", within=30
                )
                await asyncio.sleep(1.0)  # a second send would have been captured by now
                sent = {email: len(await captured(postmark, email)) for email in emails}
        finally:
            notifier.stop()

    assert sent == dict.fromkeys(emails, 1)
    assert len(letters) == expected
    errors = sorted(
        (letter.headers["dlq_partition"], letter.headers["dlq_error"]) for letter in letters
    )
    for partition in partitions:
        mine = [error for at, error in errors if at == str(partition)]
        for why in (why for _, _, why in kinds.values()):
            assert any(why in error for error in mine), (partition, why, mine)
    assert {letter.reason for letter in letters} == {"unreadable"}
    log = notifier.log()
    assert "batch not settled" not in log
    assert "@example.com" not in "".join(error for _, error in errors)
