"""The retry loop: pending notifications that are due (after a backoff, at the end of a
settle window, or because the claim of a notifier that died expired) are claimed and worked
on here, apart from the Kafka consumer, so a waiting email never holds up a partition.

Every notifier runs one; claims keep them from working on the same notification."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from notifier.delivery import Delivery
from notifier.postmark import PostmarkUnauthorized
from notifier.settings import NotifierSettings
from notifier.store import NotificationStore
from postroom.backoff import Backoff

log = structlog.get_logger("postroom.notifier")

# When rows are due but none could be claimed (another notifier holds them), look again
# after this long rather than at once.
_IDLE_FLOOR = 0.05


class RetryLoop:
    def __init__(
        self,
        settings: NotifierSettings,
        *,
        delivery: Delivery,
        store: NotificationStore,
        halt: Callable[[PostmarkUnauthorized], None],
        halted: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.delivery = delivery
        self.store = store
        self._halt = halt
        self._halted = halted
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Something was handed back to wait: look again at when the next row is due."""
        self._wake.set()

    async def run(self) -> None:
        backoff = Backoff(
            self.settings.notifier_backoff_initial, self.settings.notifier_backoff_max
        )
        while not self._stopping.is_set() and not self._halted():
            try:
                claimed = await self.delivery.sweep()
                wait = 0.0 if claimed else await self._idle_wait()
                backoff.reset()
            except PostmarkUnauthorized as exc:
                self._halt(exc)
                return
            except Exception as exc:  # the loop outlives any one round
                wait = backoff.next_delay()
                log.warning(
                    "retry round failed; backing off",
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    seconds=round(wait, 2),
                )
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    async def _idle_wait(self) -> float:
        """How long to sleep: until the next row is due, at most the retry interval."""
        due_in = await self.store.due_in()
        interval = self.settings.notifier_retry_interval
        if due_in is None:
            return interval
        return min(interval, max(due_in, _IDLE_FLOOR))
