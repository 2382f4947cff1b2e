"""The Alembic revisions build exactly the tables the code describes, and the newest ones can
be undone and redone (real PostgreSQL)."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from migrations import alembic_config, upgrade
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


def test_0014_gives_users_a_locale_and_keeps_them_going_down(database_url: str) -> None:
    """Users from before 0014 keep everything and get no locale (their emails: the default
    locale); going back drops the locales and the resend requests, not the users."""
    import asyncpg

    from postroom.settings import plain_url

    command.downgrade(alembic_config(database_url), "0013")

    async def before() -> None:
        conn = await asyncpg.connect(plain_url(database_url))
        try:
            await conn.execute(
                "INSERT INTO users (id, email, email_key, name) "
                "VALUES (gen_random_uuid(), 'Ada@Example.com', 'ada@example.com', 'Ada')"
            )
        finally:
            await conn.close()

    run_async(before)
    upgrade(database_url)

    async def after() -> tuple[Any, Any]:
        conn = await asyncpg.connect(plain_url(database_url))
        try:
            user = await conn.fetchrow("SELECT id, email, name, locale FROM users")
            await conn.execute(
                "INSERT INTO verification_requests (user_id) VALUES ($1)", user["id"]
            )
            await conn.execute("UPDATE users SET locale = 'de-AT'")
            return user, await conn.fetchval("SELECT count(*) FROM verification_requests")
        finally:
            await conn.close()

    user, requests = run_async(after)
    assert (user["email"], user["name"], user["locale"]) == ("Ada@Example.com", "Ada", None)
    assert requests == 1

    command.downgrade(alembic_config(database_url), "0013")

    async def down() -> list[str]:
        conn = await asyncpg.connect(plain_url(database_url))
        try:
            assert await conn.fetchval("SELECT count(*) FROM users") == 1
            assert await conn.fetchval("SELECT to_regclass('verification_requests')") is None
            rows = await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'"
            )
            return [row["column_name"] for row in rows]
        finally:
            await conn.close()

    assert "locale" not in run_async(down)
    upgrade(database_url)
    assert differences(database_url) == []
