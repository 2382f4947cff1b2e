"""The database: a SQLAlchemy engine (the schema, and everything off the hot path) and, for
the api's routes, a plain asyncpg pool. Both are built by a process's lifespan, never at
import time."""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import asyncpg
import sqlalchemy as sa
from asyncpg.pool import PoolConnectionProxy
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from postroom.settings import CommonSettings, plain_url

# A connection of an asyncpg pool, or a bare one.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


def create_engine(
    settings: CommonSettings, *, application_name: str, pool_size: int | None = None
) -> AsyncEngine:
    """An asyncpg-backed engine of `pool_size` connections (DATABASE_POOL_SIZE by default)."""
    return create_async_engine(
        settings.sqlalchemy_url,
        # No overflow: overflow connections are closed as soon as they come back, so under
        # steady load the pool would open and close sessions all the time.
        pool_size=pool_size or settings.database_pool_size,
        max_overflow=0,
        pool_timeout=settings.database_connect_timeout,
        # A failed statement's error must not carry its parameters (emails, names) into logs.
        hide_parameters=True,
        connect_args={
            "timeout": settings.database_connect_timeout,
            "server_settings": {"application_name": application_name},
        },
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset query on release: see `create_pool`."""


async def create_pool(settings: CommonSettings, *, application_name: str) -> asyncpg.Pool:
    """An asyncpg pool sized like the engine. It opens its connections as they are needed, so
    a process starts while the database is away and its requests answer 503 until it is back.

    Its users change no session state: no SET, LISTEN, cursors or advisory locks. So a
    connection going back to the pool skips asyncpg's reset query (`RESET ALL`, `UNLISTEN *`,
    ...), a round trip per request; an open transaction is still rolled back."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        plain_url(settings.database_url),
        min_size=0,
        max_size=settings.database_pool_size,
        timeout=settings.database_connect_timeout,
        server_settings={"application_name": application_name},
        reset=_keep_session,
    )
    return pool


async def ping(db: AsyncEngine | asyncpg.Pool, *, within: float) -> None:
    """Raise unless the database answers `SELECT 1` within `within` seconds."""
    async with asyncio.timeout(within):
        if isinstance(db, asyncpg.Pool):
            async with db.acquire() as conn:
                await conn.fetchval("SELECT 1")
            return
        async with db.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))


# asyncpg's errors that mean the server went away or refuses connections for now.
_ASYNCPG_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.OperatorInterventionError,
    asyncpg.ConnectionDoesNotExistError,
)


def is_unavailable(exc: BaseException) -> bool:
    """True when an error means "the database is unreachable", not "the query was wrong".

    The chain of causes counts: a connection lost inside a transaction surfaces as the error
    leaving the transaction ("the underlying connection is closed"), raised while handling
    the one that says the server went away."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _unavailable(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.ProtocolViolationError):  # a bug on our side, not an outage
        return False
    if isinstance(exc, OSError | TimeoutError | OperationalError | InterfaceError):
        return True
    if isinstance(exc, _ASYNCPG_UNAVAILABLE):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def unique_violation(exc: DBAPIError) -> str | None:
    """The constraint name when `exc` is a unique violation, else None."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) != "23505":
        return None
    cause = getattr(orig, "__cause__", None)
    return getattr(cause, "constraint_name", None) or getattr(orig, "constraint_name", None)
