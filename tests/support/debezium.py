"""Debezium (Kafka Connect with the committed outbox connector) for a test's database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from postroom_cli.embedded import DebeziumConnect


@asynccontextmanager
async def streaming(
    database_url: str, bootstrap_servers: str, topic_prefix: str
) -> AsyncIterator[DebeziumConnect]:
    """Debezium publishing `database_url`'s outbox under `topic_prefix`, with a replication
    slot and publication of its own; stopped, and its slot dropped (a database holding one
    cannot be dropped), when the block ends. `stop()` it inside the block for a cutover."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    connect = DebeziumConnect(
        database_url=database_url,
        bootstrap_servers=bootstrap_servers,
        topic_prefix=topic_prefix,
        overrides={"slot.name": name, "publication.name": name},
    )
    await asyncio.to_thread(connect.start)
    try:
        yield connect
    finally:
        await asyncio.to_thread(connect.stop)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = $1",
                name,
            )
        finally:
            await conn.close()
