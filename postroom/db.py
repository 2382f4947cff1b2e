"""The database engine. Built by each process's lifespan, never at import time."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from postroom.settings import CommonSettings


def create_engine(settings: CommonSettings, *, application_name: str) -> AsyncEngine:
    """An asyncpg-backed engine sized by the settings."""
    return create_async_engine(
        settings.sqlalchemy_url,
        # No overflow: overflow connections are closed as soon as they come back, so under
        # steady load the pool would open and close sessions all the time.
        pool_size=settings.database_pool_size,
        max_overflow=0,
        pool_timeout=settings.database_connect_timeout,
        # A failed statement's error must not carry its parameters (emails, names) into logs.
        hide_parameters=True,
        connect_args={
            "timeout": settings.database_connect_timeout,
            "server_settings": {"application_name": application_name},
        },
    )


async def ping(engine: AsyncEngine, *, within: float) -> None:
    """Raise unless the database answers `SELECT 1` within `within` seconds."""
    async with asyncio.timeout(within), engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


def is_unavailable(exc: BaseException) -> bool:
    """True when an error means "the database is unreachable", not "the query was wrong"."""
    if isinstance(exc, OSError | TimeoutError | OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def unique_violation(exc: DBAPIError) -> str | None:
    """The constraint name when `exc` is a unique violation, else None."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) != "23505":
        return None
    cause = getattr(orig, "__cause__", None)
    return getattr(cause, "constraint_name", None) or getattr(orig, "constraint_name", None)
