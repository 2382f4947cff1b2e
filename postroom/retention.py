"""Pruning what is kept only for a while: expired idempotency keys (the api), old webhook
receipts (the notifier). Each process prunes its own tables; several replicas pruning at
once only share the work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger("postroom.retention")


@dataclass(frozen=True, slots=True)
class Retention:
    """Rows of `stamp`'s table older than `seconds` (by `stamp`) go."""

    stamp: sa.Column[object]
    seconds: float


async def prune(engine: AsyncEngine, retention: Retention, *, batch: int = 1000) -> int:
    """Delete the rows past their retention, `batch` at a time (short transactions, few row
    locks); return how many went."""
    table = retention.stamp.table
    keys = list(table.primary_key.columns)
    old = (
        sa.select(*keys)
        .where(
            retention.stamp
            < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, retention.seconds)
        )
        .limit(batch)
        .subquery()
    )
    statement = sa.delete(table).where(sa.tuple_(*keys).in_(sa.select(*old.c)))
    total = 0
    while True:
        async with engine.begin() as conn:
            deleted = (await conn.execute(statement)).rowcount
        total += deleted
        if deleted < batch:
            return total


class Pruner:
    """Prunes some tables every `interval` seconds until stopped; failures are logged and
    tried again next time."""

    def __init__(
        self, engine: AsyncEngine, retentions: Sequence[Retention], *, interval: float
    ) -> None:
        self.engine = engine
        self.retentions = retentions
        self.interval = interval
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            for retention in self.retentions:
                try:
                    pruned = await prune(self.engine, retention)
                except Exception as exc:  # the database may be away: next time
                    log.warning(
                        "prune failed",
                        table=retention.stamp.table.name,
                        error=f"{type(exc).__name__}: {exc}"[:300],
                    )
                    continue
                if pruned:
                    log.info("pruned", table=retention.stamp.table.name, rows=pruned)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
