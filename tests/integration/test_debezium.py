"""Debezium as the relay's drop-in: Kafka Connect with Debezium's PostgreSQL connector and its
outbox event router, configured as `deploy/debezium` commits it, publishes each outbox row as
the relay does (topic, partition, key, value and headers, byte for byte), and the notifier
sends one welcome from either (real PostgreSQL with logical decoding, Apache Kafka, Kafka
Connect from the pinned jars)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app as create_api
from postroom import events
from postroom.kafka import create_missing_topics
from postroom.outbox import add_event
from postroom_cli.embedded import DebeziumConnect
from tests.support import brokers
from tests.support.debezium import streaming
from tests.support.kafka import Consumed, read_topic
from tests.support.names import unique
from tests.support.postmark import Sandbox
from tests.support.relay import running, wait_published
from tests.support.settings import (
    make_api_settings,
    make_notifier_settings,
    make_relay_settings,
)
from tests.support.stack import notifier_in_process, register

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(
        brokers.kind() != "kafka", reason="Kafka Connect needs Apache Kafka, not Tansu"
    ),
]


@pytest.fixture
async def debezium(database_url: str, kafka_bootstrap: str) -> AsyncIterator[DebeziumConnect]:
    prefix = unique("t")
    settings = make_relay_settings(database_url, kafka_bootstrap, kafka_topic_prefix=prefix)
    await create_missing_topics(settings, [settings.topic("user")], client_id="debezium-test")
    async with streaming(database_url, kafka_bootstrap, prefix) as connect:
        yield connect


def as_sent(record: Consumed) -> tuple[object, ...]:
    return (record.topic, record.partition, record.key, record.raw_value, record.raw_headers)


async def test_debezium_publishes_each_row_as_the_relay_does_and_one_welcome_goes_out(
    debezium: DebeziumConnect,
    database_url: str,
    kafka_bootstrap: str,
    db: asyncpg.Connection,
    client: httpx.AsyncClient,
    sandbox: Sandbox,
) -> None:
    prefix = debezium.env["KAFKA_TOPIC_PREFIX"]
    email = f"{unique('zoë')}@example.com"
    await register(client, email)
    # A payload PostgreSQL keeps out of line (TOAST), with text beyond ASCII.
    big = events.Event(
        events.UserRegistered(
            user_id=uuid.uuid4(),
            version=1,
            email=f"{unique('big')}@example.com",
            name="Zoë " + "ñ" * 20_000,
            registered_at=datetime.now(UTC),
        ),
        source=events.SOURCE_API,
    )
    async with db.transaction():
        await add_event(db, big, shards=8)
    topic = f"{prefix}.user"

    by_debezium = await read_topic(kafka_bootstrap, topic, expect=2)
    # The relay publishes the same rows to the same topic (Debezium skips its updates).
    settings = make_relay_settings(database_url, kafka_bootstrap, kafka_topic_prefix=prefix)
    async with running(settings):
        await wait_published(db, 2)
        both = await read_topic(kafka_bootstrap, topic, expect=4)
    debezium_ids = {record.ce_id for record in by_debezium}
    by_relay = [
        record
        for record in both
        if (record.topic, record.offset) not in {(r.topic, r.offset) for r in by_debezium}
    ]

    assert len(by_debezium) == 2
    assert len(by_relay) == 2
    assert {record.ce_id for record in by_relay} == debezium_ids
    relay_of = {record.ce_id: record for record in by_relay}
    for record in by_debezium:
        assert as_sent(record) == as_sent(relay_of[record.ce_id])
    assert "traceparent" not in {name for r in by_debezium for name, _ in r.raw_headers}

    # A notifier reading both copies sends one welcome.
    notifier_settings = make_notifier_settings(database_url, kafka_bootstrap, sandbox.url, prefix)
    async with (
        notifier_in_process(notifier_settings),
        httpx.AsyncClient(base_url=sandbox.url) as postmark,
    ):
        async with asyncio.timeout(30):
            while not (await postmark.get("/api/messages", params={"to": email})).json():
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # a second welcome would have been captured by now
        sent = (await postmark.get("/api/messages", params={"to": email})).json()
    assert len(sent) == 1


async def test_under_debezium_the_api_reports_the_slot_and_prunes_rows_nobody_marks(
    database_url: str, kafka_bootstrap: str, db: asyncpg.Connection
) -> None:
    """OUTBOX_PUBLISHER=debezium: rows are never marked published, so the api deletes them by
    age; and /metrics shows whether a connector streams from the slot and the WAL it holds."""
    old, fresh = uuid.uuid4(), uuid.uuid4()
    for event_id, age in ((old, 2 * 86_400), (fresh, 60)):
        await db.execute(
            "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, "
            "shard, created_at) VALUES ($1, 'user', 'u', 'user.updated', '{}', 0, "
            "now() - make_interval(secs => $2))",
            event_id,
            age,
        )
    settings = make_api_settings(
        database_url,
        outbox_publisher="debezium",
        outbox_retention=86_400,
        prune_interval=0.2,
        slot_report_interval=0.2,
    )
    app = create_api(settings)

    async def series(http: httpx.AsyncClient, name: str) -> dict[str, float]:
        text = (await http.get("/metrics")).text
        return {
            sample.labels["slot"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        }

    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        async with streaming(database_url, kafka_bootstrap, unique("t")) as connect:
            slot = connect.overrides["slot.name"]
            async with asyncio.timeout(10):
                while (await series(http, "postroom_outbox_slot_active")).get(slot) != 1.0:
                    await asyncio.sleep(0.1)
            lag = (await series(http, "postroom_outbox_slot_lag_bytes"))[slot]
            await asyncio.to_thread(connect.stop)
            async with asyncio.timeout(10):
                while (await series(http, "postroom_outbox_slot_active")).get(slot) != 0.0:
                    await asyncio.sleep(0.1)
        kept = {row["event_id"] for row in await db.fetch("SELECT event_id FROM outbox")}

    assert lag >= 0
    assert kept == {fresh}
