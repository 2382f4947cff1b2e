"""The relay moves committed outbox rows to Kafka (real PostgreSQL, real broker)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import create_async_engine

from api.app import create_app
from outbox_relay import claims
from postroom import events
from postroom.outbox import add_event, shard_of
from postroom.settings import asyncpg_url
from tests.support.kafka import first_occurrences, read_topic
from tests.support.relay import running, wait_published
from tests.support.settings import API_TOKEN, make_api_settings, make_relay_settings

pytestmark = pytest.mark.kafka


async def test_a_committed_event_reaches_its_topic_once_as_a_cloudevent(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    settings = make_relay_settings(database_url, kafka_bootstrap)
    created = await client.post("/v1/users", json={"email": "ada@example.com", "name": "Ada"})
    user_id = created.json()["id"]
    row = await db.fetchrow("SELECT * FROM outbox")
    assert row is not None

    async with running(settings):
        await wait_published(db, 1)
        records = await read_topic(kafka_bootstrap, settings.topic("user"), expect=1)

    assert len(records) == 1
    record = records[0]
    assert record.key == user_id
    assert record.value == json.loads(row["payload"])
    assert record.value["email"] == "ada@example.com"
    assert record.headers["ce_specversion"] == "1.0"
    assert record.headers["ce_id"] == str(row["event_id"])
    assert record.headers["ce_type"] == "user.registered"
    assert record.headers["ce_source"] == "/postroom/api"
    assert record.headers["ce_subject"] == user_id
    assert record.headers["content-type"] == "application/json"
    sent_time = datetime.fromisoformat(record.headers["ce_time"])
    assert sent_time == row["created_at"]
    # Each header the relay sends is a column a change-data-capture publisher can place.
    assert [record.headers[name] for name in ("ce_specversion", "ce_source", "ce_time")] == [
        row["ce_specversion"],
        row["ce_source"],
        row["ce_time"],
    ]
    assert (row["content_type"], row["traceparent"]) == ("application/json", None)
    published = await db.fetchrow("SELECT published_at, attempts FROM outbox")
    assert published is not None
    assert published["published_at"] is not None
    assert published["attempts"] == 1


async def test_a_late_commit_below_a_published_id_is_not_skipped(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    settings = make_relay_settings(database_url, kafka_bootstrap, relay_shards=1)
    engine = create_async_engine(asyncpg_url(database_url))
    try:
        async with running(settings):
            a = await engine.connect()
            await a.begin()
            event_a = events.Event(
                events.UserRegistered(
                    user_id=uuid.uuid4(),
                    version=1,
                    email="a@example.com",
                    name="A",
                    registered_at=datetime.now().astimezone(),
                )
            )
            id_a = await add_event(a, event_a, shards=1)  # id 1, transaction stays open
            async with engine.begin() as b:
                event_b = events.Event(
                    events.UserRegistered(
                        user_id=uuid.uuid4(),
                        version=1,
                        email="b@example.com",
                        name="B",
                        registered_at=datetime.now().astimezone(),
                    )
                )
                id_b = await add_event(b, event_b, shards=1)
            assert id_a < id_b
            await wait_published(db, 1)  # B, with the higher id, goes first
            await a.commit()
            await a.close()
            await wait_published(db, 2)
            records = await read_topic(kafka_bootstrap, settings.topic("user"), expect=2)
    finally:
        await engine.dispose()
    assert {r.ce_id for r in records} == {str(event_a.event_id), str(event_b.event_id)}


async def test_notify_wakes_the_relay_long_before_the_poll(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    settings = make_relay_settings(database_url, kafka_bootstrap, relay_poll_interval=10.0)
    async with running(settings) as relay:
        async with asyncio.timeout(10):
            while not (relay.ready and relay.ownership.owned):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the relay is idle, waiting for the 10 s poll
        loop = asyncio.get_running_loop()
        started = loop.time()
        created = await client.post("/v1/users", json={"email": "n@example.com", "name": "N"})
        assert created.status_code == 201
        await wait_published(db, 1, timeout=5)
        elapsed = loop.time() - started
    assert elapsed < 2.0, f"published after {elapsed:.2f}s: the NOTIFY path did not wake the relay"


async def test_many_users_many_updates_arrive_in_version_order(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    settings = make_relay_settings(database_url, kafka_bootstrap)
    users = []
    for n in range(20):
        answer = await client.post("/v1/users", json={"email": f"u{n}@example.com", "name": "U"})
        users.append(answer.json()["id"])

    async def churn(user_id: str) -> None:
        for step in range(10):
            answer = await client.patch(f"/v1/users/{user_id}", json={"name": f"U {step}"})
            assert answer.status_code == 200

    relays = [
        make_relay_settings(
            database_url,
            kafka_bootstrap,
            kafka_topic_prefix=settings.kafka_topic_prefix,
            relay_id=f"r{i}",
        )
        for i in range(3)
    ]
    async with running(relays[0]), running(relays[1]), running(relays[2]):
        await asyncio.gather(*(churn(u) for u in users))
        total = await db.fetchval("SELECT count(*) FROM outbox")
        await wait_published(db, total, timeout=30)
        records = await read_topic(kafka_bootstrap, settings.topic("user"), expect=total)

    kept = first_occurrences(records)
    assert len(kept) == total == 20 * 11
    for user_id in users:
        versions = [r.value["version"] for r in kept if r.key == user_id]
        assert versions == list(range(1, 12)), user_id
    assert shard_of(users[0], 8) in range(8)


async def test_a_record_too_large_is_parked_and_the_shard_goes_on(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    settings = make_relay_settings(
        database_url, kafka_bootstrap, relay_shards=1, relay_max_record_bytes=64 * 1024
    )
    engine = create_async_engine(asyncpg_url(database_url))
    user_id = uuid.uuid4()
    try:
        async with engine.begin() as conn:
            for n, name in enumerate(["before", "x" * 100_000, "after"], start=1):
                await add_event(
                    conn,
                    events.Event(
                        events.UserUpdated(
                            user_id=user_id,
                            version=n,
                            email="a@example.com",
                            name=name,
                            changed=["name"],
                        )
                    ),
                    shards=1,
                )
        async with running(settings):
            await wait_published(db, 2)
            records = await read_topic(kafka_bootstrap, settings.topic("user"), expect=2)
            parked = await db.fetchrow("SELECT * FROM outbox WHERE parked_at IS NOT NULL")
    finally:
        await engine.dispose()
    assert [r.value["name"] for r in records] == ["before", "after"]
    assert parked is not None
    assert json.loads(parked["payload"])["version"] == 2
    assert "MessageSizeTooLarge" in parked["last_error"]
    assert parked["published_at"] is None


async def test_a_graceful_stop_releases_the_shards(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    settings = make_relay_settings(database_url, kafka_bootstrap)
    async with running(settings) as relay:
        async with asyncio.timeout(10):
            while len(relay.ownership.owned) < 8:
                await asyncio.sleep(0.05)
    held = await db.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = $1",
        0x706F7374,
    )
    assert held == 0
    assert (
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'postroom-relay:%'"
        )
        == 0
    )


async def test_poll_only_mode_publishes_without_notify(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    api = create_app(make_api_settings(database_url, outbox_notify=False))
    settings = make_relay_settings(
        database_url, kafka_bootstrap, outbox_notify=False, relay_poll_interval=0.3
    )
    listener = await asyncpg.connect(database_url)
    notified: list[str] = []
    await listener.add_listener("postroom_outbox", lambda *args: notified.append(args[-1]))
    try:
        async with (
            LifespanManager(api),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=api),
                base_url="http://testserver",
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            ) as http,
            running(settings),
        ):
            created = await http.post("/v1/users", json={"email": "p@example.com", "name": "P"})
            assert created.status_code == 201
            await wait_published(db, 1, timeout=5)
    finally:
        await listener.close()
    assert notified == []


async def test_claims_skip_published_rows_by_index_not_by_reading_them(
    db: asyncpg.Connection,
) -> None:
    await db.execute(
        """
        INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, shard)
        SELECT gen_random_uuid(), 'user', 'u' || n, 'user.updated', '{}', n % 8
        FROM generate_series(1, 20000) AS n
        """
    )
    # Statistics from before a drain: most rows unpublished. Then most get published.
    await db.execute("ANALYZE outbox")
    await db.execute("UPDATE outbox SET published_at = now() WHERE id <= 19000")

    plan = await db.fetchval(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + claims._CLAIM,
        list(range(8)),
        125,
    )
    text = json.dumps(plan)
    assert "ix_outbox_unpublished" in text
    removed = [int(n) for n in re.findall(r'"Rows Removed by Filter": (\d+)', text)]
    assert sum(removed) < 1000, "the claim read published rows to skip them"
    rows = await claims.claim(db, shards=list(range(8)), per_shard=125)
    assert len(rows) == 1000
    assert min(r.id for r in rows) == 19001


async def test_rows_written_with_more_shards_than_the_relay_knows_are_still_published(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    """Writers with RELAY_SHARDS=16, a relay with 8: rows in shards 8-15 are covered by the
    owners of shards 0-7, counted, and reported; none is left unpublished unnoticed."""
    writers = make_api_settings(database_url, relay_shards=16)
    relay_settings = make_relay_settings(database_url, kafka_bootstrap, relay_shards=8)
    api = create_app(writers)
    async with (
        LifespanManager(api),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as http,
    ):
        for n in range(40):
            created = await http.post(
                "/v1/users", json={"email": f"wide{n}@example.com", "name": "W"}
            )
            assert created.status_code == 201
    shards = {row["shard"] for row in await db.fetch("SELECT shard FROM outbox")}
    assert any(shard >= 8 for shard in shards), shards  # the drill needs stray shards

    async with running(relay_settings) as relay:
        await wait_published(db, 40)
        strays = relay.metrics.stray_shards._value.get()
        records = await read_topic(kafka_bootstrap, relay_settings.topic("user"), expect=40)

    assert await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    assert len({record.key for record in records}) == 40
    assert strays == len({shard for shard in shards if shard >= 8})


async def test_the_connection_holding_the_shard_locks_is_kept_alive_by_the_server(
    database_url: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, str] = {}
    real_connect = asyncpg.connect

    async def connect_and_look(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        conn = await real_connect(*args, **kwargs)
        for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"):
            seen[name] = await conn.fetchval(f"SHOW {name}")
        return conn

    monkeypatch.setattr("outbox_relay.relay.asyncpg.connect", connect_and_look)
    async with running(make_relay_settings(database_url, kafka_bootstrap)) as relay:
        async with asyncio.timeout(20):
            while not relay.ready:
                await asyncio.sleep(0.02)

    # What the server applies to the relay's own connection, over TCP.
    assert seen == {
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
    }
