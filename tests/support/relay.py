"""A relay in the test's own event loop, and waiting for it to publish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from outbox_relay.relay import Relay
from outbox_relay.settings import RelaySettings


@asynccontextmanager
async def running(settings: RelaySettings) -> AsyncIterator[Relay]:
    """A relay running for the duration of the block, stopped gracefully after it."""
    relay = Relay(settings)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await asyncio.wait_for(task, timeout=30)


async def wait_published(db: asyncpg.Connection, count: int, timeout: float = 20) -> None:
    """Return once at least `count` outbox rows are marked published."""
    async with asyncio.timeout(timeout):
        while (
            await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL") < count
        ):
            await asyncio.sleep(0.02)
