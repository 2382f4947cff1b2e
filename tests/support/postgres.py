"""PostgreSQL as the tests reach it: the server the harness started (or was given), URLs of
its databases, and running async database code from a sync test."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from postroom.settings import plain_url

T = TypeVar("T")


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, whatever loop the caller has."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


def with_database(url: str, database: str) -> str:
    """`url` pointed at another database of the same server."""
    parts = urlsplit(plain_url(url))
    return urlunsplit(parts._replace(path=f"/{database}"))


@dataclass(frozen=True)
class PostgresServer:
    """The run's server: an admin URL, and the migrated template each test database copies."""

    admin_url: str
    template: str

    def url(self, database: str) -> str:
        return with_database(self.admin_url, database)

    def execute(self, *statements: str) -> None:
        """Run statements as the admin, one by one (CREATE DATABASE refuses a transaction)."""

        async def _run() -> None:
            conn = await asyncpg.connect(self.admin_url)
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        run_async(_run)
