"""What is kept only for a while goes: the api prunes expired idempotency keys and the
notifier old webhook receipts, by themselves (real PostgreSQL, the real apps)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from asgi_lifespan import LifespanManager

from api.app import create_app as create_api
from notifier.app import create_app as create_notifier
from postroom.db import create_engine
from postroom.models import idempotency_keys
from postroom.retention import Retention, prune
from tests.support.settings import make_api_settings, make_notifier_settings


async def keys(db: asyncpg.Connection) -> list[str]:
    return [r["key"] for r in await db.fetch("SELECT key FROM idempotency_keys ORDER BY key")]


async def add_key(db: asyncpg.Connection, key: str, age: str) -> None:
    await db.execute(
        "INSERT INTO idempotency_keys (principal, key, request_hash, status_code, response_body,"
        " created_at) VALUES ('p', $1, 'h', 201, '{\"email\": \"a@example.com\"}',"
        " now() - CAST($2::text AS interval))",
        key,
        age,
    )


async def wait_until_gone(db: asyncpg.Connection, query: str, expected: list[str]) -> list[str]:
    deadline = time.monotonic() + 10
    while True:
        found = [row[0] for row in await db.fetch(query)]
        if found == expected or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_the_api_prunes_expired_idempotency_keys(
    database_url: str, db: asyncpg.Connection
) -> None:
    await add_key(db, "expired", "2 days")
    await add_key(db, "fresh", "1 hour")
    settings = make_api_settings(database_url, idempotency_key_ttl=86_400, prune_interval=0.1)

    async with LifespanManager(create_api(settings)):
        left = await wait_until_gone(db, "SELECT key FROM idempotency_keys ORDER BY key", ["fresh"])

    assert left == ["fresh"]


async def test_the_notifier_prunes_old_webhook_receipts(
    database_url: str, db: asyncpg.Connection
) -> None:
    for digest, age in (("old", "8 days"), ("recent", "1 day")):
        await db.execute(
            "INSERT INTO webhook_receipts (digest, record_type, received_at)"
            " VALUES ($1, 'Delivery', now() - CAST($2::text AS interval))",
            digest,
            age,
        )
    settings = make_notifier_settings(
        database_url,
        "127.0.0.1:9",
        "http://127.0.0.1:9",
        "t-prune",
        webhook_receipt_retention=7 * 86_400,
        prune_interval=0.1,
    )

    async with LifespanManager(create_notifier(settings, consume=False)):
        left = await wait_until_gone(db, "SELECT digest FROM webhook_receipts", ["recent"])

    assert left == ["recent"]


async def test_pruning_goes_in_batches_until_nothing_old_is_left(
    database_url: str, db: asyncpg.Connection
) -> None:
    for n in range(7):
        await add_key(db, f"old-{n}", "3 days")
    await add_key(db, "new", "1 minute")
    engine = create_engine(make_api_settings(database_url), application_name="prune-test")
    try:
        pruned = await prune(engine, Retention(idempotency_keys.c.created_at, 86_400), batch=3)
    finally:
        await engine.dispose()

    assert pruned == 7
    assert await keys(db) == ["new"]
