"""The operator's outbox verbs against a real database and relays."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from outbox_relay import admin
from postroom import events
from postroom.outbox import add_event
from postroom.settings import asyncpg_url
from postroom_cli.embedded import free_port
from tests.support.kafka import read_topic
from tests.support.relay import running, wait_published
from tests.support.settings import make_relay_settings

pytestmark = pytest.mark.kafka


async def add_updates(database_url: str, names: list[str], *, shards: int = 1) -> uuid.UUID:
    engine = create_async_engine(asyncpg_url(database_url))
    user_id = uuid.uuid4()
    try:
        async with engine.begin() as conn:
            for version, name in enumerate(names, start=1):
                await add_event(
                    conn,
                    events.Event(
                        events.UserUpdated(
                            user_id=user_id,
                            version=version,
                            email="a@example.com",
                            name=name,
                            changed=["name"],
                        )
                    ),
                    shards=shards,
                )
    finally:
        await engine.dispose()
    return user_id


async def test_retry_parked_puts_a_parked_row_back_in_line(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    strict = make_relay_settings(
        database_url, kafka_bootstrap, relay_shards=1, relay_max_record_bytes=64 * 1024
    )
    await add_updates(database_url, ["small", "x" * 100_000])
    async with running(strict):
        await wait_published(db, 1)
        async with asyncio.timeout(10):
            while not await db.fetchval("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL"):
                await asyncio.sleep(0.05)
    report = await admin.status(strict)
    assert (report.parked, report.pending) == (1, 0)

    retried = await admin.retry_parked(strict)

    assert len(retried) == 1
    report = await admin.status(strict)
    assert (report.parked, report.pending) == (0, 1)
    # With a producer that accepts the size, the re-queued row goes out.
    roomy = make_relay_settings(
        database_url,
        kafka_bootstrap,
        relay_shards=1,
        kafka_topic_prefix=strict.kafka_topic_prefix,
        relay_max_record_bytes=1024 * 1024,
    )
    async with running(roomy):
        await wait_published(db, 2)
        records = await read_topic(kafka_bootstrap, strict.topic("user"), expect=2)
    assert [len(r.value["name"]) for r in records] == [5, 100_000]


async def test_retry_parked_of_an_unknown_id_changes_nothing(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    settings = make_relay_settings(database_url, kafka_bootstrap)
    await add_updates(database_url, ["a"])
    assert await admin.retry_parked(settings, ids=[999_999]) == []
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE parked_at IS NULL") == 1


async def test_status_shows_pending_rows_and_shard_owners(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    settings = make_relay_settings(database_url, kafka_bootstrap, relay_shards=4)
    await add_updates(database_url, ["a", "b", "c"], shards=4)

    before = await admin.status(settings)
    assert before.pending == 3
    assert [s.owner for s in before.shards] == [None] * 4
    assert max(s.oldest_pending_age or 0 for s in before.shards) > 0

    async with running(
        make_relay_settings(
            database_url,
            kafka_bootstrap,
            relay_shards=4,
            relay_id="relay-a",
            kafka_topic_prefix=settings.kafka_topic_prefix,
        )
    ):
        await wait_published(db, 3)
        during = await admin.status(settings)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "postroom_cli",
            "outbox",
            "status",
            env={**os.environ, "DATABASE_URL": database_url, "RELAY_SHARDS": "4"},
            stdout=asyncio.subprocess.PIPE,
        )
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        as_json = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "postroom_cli",
            "outbox",
            "status",
            "--json",
            env={**os.environ, "DATABASE_URL": database_url, "RELAY_SHARDS": "4"},
            stdout=asyncio.subprocess.PIPE,
        )
        json_out, _ = await asyncio.wait_for(as_json.communicate(), timeout=60)
    assert process.returncode == 0
    printed = stdout.decode()
    assert during.pending == 0
    assert [s.owner for s in during.shards] == ["relay-a"] * 4
    assert printed.count("relay-a") == 4
    assert "pending 0" in printed
    # The same report for a script: JSON with every shard and its owner.
    assert as_json.returncode == 0
    report = json.loads(json_out)
    assert [shard["owner"] for shard in report["shards"]] == ["relay-a"] * 4
    assert (report["pending"], report["parked"]) == (0, 0)
    assert report["published"] >= 3


def test_an_unreachable_database_is_one_line_and_exit_code_3() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "postroom_cli", "outbox", "recent", "--json"],
        env={**os.environ, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("postroom outbox: the database at 127.0.0.1:")
    assert "does not answer" in lines[0]


def test_the_command_says_its_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "postroom_cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"postroom {importlib.metadata.version('postroom')}"


async def test_prune_deletes_only_old_published_rows(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    settings = make_relay_settings(database_url, kafka_bootstrap)
    await add_updates(database_url, ["old", "new", "unpublished"])
    await db.execute(
        "UPDATE outbox SET published_at = now(), created_at = now() - interval '8 days' "
        "WHERE payload->>'name' = 'old'"
    )
    await db.execute("UPDATE outbox SET published_at = now() WHERE payload->>'name' = 'new'")
    await db.execute(
        "UPDATE outbox SET created_at = now() - interval '9 days' "
        "WHERE payload->>'name' = 'unpublished'"
    )

    deleted = await admin.prune(settings, older_than=7 * 24 * 3600)

    assert deleted == 1
    left = await db.fetch("SELECT payload->>'name' AS name FROM outbox ORDER BY id")
    assert [row["name"] for row in left] == ["new", "unpublished"]


async def test_recent_as_json_gives_the_payload_as_an_object_and_times_with_z(
    client: httpx.AsyncClient, database_url: str
) -> None:
    created = await client.post("/v1/users", json={"email": "ada@example.com", "name": "Ada"})
    assert created.status_code == 201
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "postroom_cli",
        "outbox",
        "recent",
        "--json",
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
    )
    printed, _ = await asyncio.wait_for(done.communicate(), timeout=60)
    assert done.returncode == 0
    [row] = json.loads(printed)
    assert row["payload"]["email"] == "ada@example.com"  # an object, not a string in a string
    assert row["payload"]["user_id"] == created.json()["id"]
    assert row["created_at"].endswith("Z")
    assert datetime.fromisoformat(row["created_at"]).utcoffset() == timedelta(0)
