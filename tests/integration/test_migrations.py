"""The Alembic revisions build exactly the tables the code describes, and the newest ones can
be undone and redone (real PostgreSQL)."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from postroom.migrate import alembic_config, upgrade
from postroom.models import metadata
from postroom.settings import asyncpg_url
from tests.support.postgres import run_async


def differences(database_url: str) -> list[Any]:
    async def compare() -> list[Any]:
        engine = create_async_engine(asyncpg_url(database_url))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: list(compare_metadata(MigrationContext.configure(sync), metadata))
                )
        finally:
            await engine.dispose()

    return run_async(compare)


def test_the_migrations_build_the_tables_the_code_describes(database_url: str) -> None:
    assert differences(database_url) == []


def test_the_newest_revision_can_be_undone_and_redone(database_url: str) -> None:
    # Back to before the newest revision that changes the schema (data-only ones after it,
    # such as 0011's keys, are undone on the way), then up again.
    for _ in range(3):
        command.downgrade(alembic_config(database_url), "-1")
        if differences(database_url):
            break
    assert differences(database_url) != []
    upgrade(database_url)
    assert differences(database_url) == []
