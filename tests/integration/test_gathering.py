"""Gathering under a steady stream (RELAY_GATHER, NOTIFIER_GATHER): the rows and records of a
short window share one relay cycle or one notifier batch, and an event that arrives alone after
a quiet spell is not held back (real PostgreSQL, real broker, the sandbox over HTTP)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import pytest

from outbox_relay.relay import Relay
from tests.support.names import address
from tests.support.postmark import Sandbox, sandbox_stats
from tests.support.relay import running, wait_published
from tests.support.settings import make_relay_settings
from tests.support.stack import register, running_stack

pytestmark = pytest.mark.kafka

GATHER = 1.0  # seconds: far above any pickup delay, so holding a lone event would show
STREAM = 30  # events, one every SPACING seconds: 0.6 s in all, under one gather window
SPACING = 0.02


def cycles_that_published(relay: Relay) -> float:
    [family] = relay.metrics.batch_size.collect()
    return next(s.value for s in family.samples if s.name.endswith("_count"))


async def stream(client: httpx.AsyncClient, tag: str) -> None:
    for n in range(STREAM):
        answer = await client.post("/v1/users", json={"email": address(f"{tag}{n}"), "name": "S"})
        assert answer.status_code == 201
        await asyncio.sleep(SPACING)


async def wait_idle(relay: Relay) -> None:
    async with asyncio.timeout(10):
        while not (relay.ready and relay.ownership.owned):
            await asyncio.sleep(0.05)
    await asyncio.sleep(GATHER + 0.2)  # quiet for longer than a window


async def test_the_relay_gathers_a_stream_and_never_holds_a_lone_row(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    settings = make_relay_settings(
        database_url, kafka_bootstrap, relay_gather=GATHER, relay_poll_interval=10.0
    )
    async with running(settings) as relay:
        await wait_idle(relay)
        created = await client.post("/v1/users", json={"email": address("lone"), "name": "L"})
        assert created.status_code == 201
        await wait_published(db, 1, timeout=5)
        lone = await db.fetchval("SELECT extract(epoch FROM published_at - created_at) FROM outbox")
        assert float(lone) < GATHER / 2, f"a lone row waited {float(lone):.3f} s"

        await wait_idle(relay)
        before = cycles_that_published(relay)
        await stream(client, "s")
        await wait_published(db, 1 + STREAM, timeout=10)
        cycles = cycles_that_published(relay) - before
        worst = await db.fetchval(
            "SELECT max(extract(epoch FROM published_at - created_at)) FROM outbox"
        )
    # The stream spans 0.6 s: its first row goes at once, the rest in one or two cycles more.
    assert cycles <= 3, f"{STREAM} rows took {cycles:.0f} cycles"
    assert float(worst) < GATHER + 0.5


async def test_without_gathering_each_row_of_the_stream_takes_a_cycle_of_its_own(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    """The comparison that gives the test above its meaning."""
    settings = make_relay_settings(
        database_url, kafka_bootstrap, relay_gather=0.0, relay_poll_interval=10.0
    )
    async with running(settings) as relay:
        await wait_idle(relay)
        before = cycles_that_published(relay)
        await stream(client, "u")
        await wait_published(db, STREAM, timeout=10)
        cycles = cycles_that_published(relay) - before
    assert cycles >= STREAM / 2


async def test_the_notifier_gathers_a_stream_into_few_postmark_calls_and_never_holds_a_lone_email(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    async with running_stack(
        database_url, kafka_bootstrap, sandbox, notifier_gather=GATHER
    ) as stack:
        await stack.wait_consuming()
        await asyncio.sleep(GATHER + 0.2)
        lone = address("lone")
        started = time.monotonic()
        await register(stack.api, lone)
        assert len(await stack.wait_messages(lone, within=10)) == 1
        took = time.monotonic() - started
        assert took < GATHER / 2 + 0.3, f"a lone email took {took:.3f} s"

        await asyncio.sleep(GATHER + 0.2)
        calls_before = sum((await sandbox_stats(stack.sandbox))["batch_sizes"].values())
        emails = [address(f"n{n}") for n in range(STREAM)]
        for email in emails:
            await register(stack.api, email)
            await asyncio.sleep(SPACING)
        for email in emails:
            assert len(await stack.wait_messages(email, within=20)) == 1
        calls = sum((await sandbox_stats(stack.sandbox))["batch_sizes"].values()) - calls_before
    assert calls <= 4, f"{STREAM} emails took {calls} Postmark calls"
