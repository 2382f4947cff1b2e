"""Writes for the drills: users' versions committed through the outbox writer, and the
check that each user's versions arrived in order."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from postroom import events
from postroom.outbox import add_event
from postroom.settings import asyncpg_url


async def write_versions(
    database_url: str,
    users: list[uuid.UUID],
    versions: range,
    *,
    shards: int = 8,
    pause: float = 0.0,
) -> int:
    """For each version, one transaction adding that version's event for every user."""
    engine = create_async_engine(asyncpg_url(database_url))
    written = 0
    try:
        for version in versions:
            async with engine.begin() as conn:
                for user_id in users:
                    await add_event(
                        conn,
                        events.Event(
                            events.UserUpdated(
                                user_id=user_id,
                                version=version,
                                email="d@example.com",
                                name=f"v{version}",
                                changed=["name"],
                            )
                        ),
                        shards=shards,
                    )
                    written += 1
            if pause:
                await asyncio.sleep(pause)
    finally:
        await engine.dispose()
    return written


def assert_in_version_order(kept: list[Any], users: list[uuid.UUID], versions: range) -> None:
    by_user: dict[str, list[int]] = {}
    for record in kept:
        by_user.setdefault(record.key, []).append(record.value["version"])
    for user_id in users:
        assert by_user[str(user_id)] == list(versions), user_id
