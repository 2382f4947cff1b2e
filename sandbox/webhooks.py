"""Posting webhooks the way Postmark does: one event per POST, retried until answered 200.

Postmark retries for hours; the sandbox retries a few times within seconds, which is enough
for a notifier that restarts or answers 500 once. A 403 stops the retries, as with Postmark.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from sandbox.faults import Stats

log = structlog.get_logger("postroom.sandbox")

RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0)
_CONCURRENCY = 16
_KEEP = 1000


@dataclass
class WebhookPost:
    """One webhook event and what became of it (for `GET /api/webhooks`)."""

    payload: dict[str, Any]
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    attempts: int = 0
    status: str = "pending"
    last_answer: int | None = None
    last_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "RecordType": self.payload.get("RecordType"),
            "MessageID": self.payload.get("MessageID"),
            "Recipient": self.payload.get("Email") or self.payload.get("Recipient"),
            "CreatedAt": self.created_at.isoformat(),
            "Attempts": self.attempts,
            "Status": self.status,
            "LastAnswer": self.last_answer,
            "LastError": self.last_error,
            "Payload": self.payload,
        }


class WebhookSender:
    def __init__(
        self,
        *,
        url: str,
        auth: tuple[str, str] | None,
        delay: float,
        stats: Stats,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self.url = url
        self._auth = auth
        self._delay = delay
        self._stats = stats
        self._retry_delays = retry_delays
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(_CONCURRENCY)
        self.recent: deque[WebhookPost] = deque(maxlen=_KEEP)

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            auth=self._auth, timeout=httpx.Timeout(15.0, connect=5.0), follow_redirects=False
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def post(self, payload: dict[str, Any]) -> None:
        """Send one event in the background; returns at once."""
        if not self.enabled:
            return
        delivery = WebhookPost(payload)
        self.recent.append(delivery)
        task = asyncio.get_running_loop().create_task(self._deliver(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery: WebhookPost) -> None:
        assert self._client is not None
        if self._delay:
            await asyncio.sleep(self._delay)
        waits = (0.0, *self._retry_delays)
        for wait in waits:
            if wait:
                await asyncio.sleep(wait)
            delivery.attempts += 1
            try:
                async with self._slots:
                    answer = await self._client.post(self.url, json=delivery.payload)
            except httpx.HTTPError as exc:
                delivery.last_error = f"{type(exc).__name__}: {exc}"
                continue
            delivery.last_answer = answer.status_code
            if answer.status_code == 200:
                delivery.status = "delivered"
                self._stats.webhooks_delivered += 1
                return
            if answer.status_code == 403:
                break
        delivery.status = "failed"
        self._stats.webhooks_failed += 1
        log.warning(
            "webhook not accepted",
            record_type=delivery.payload.get("RecordType"),
            message_id=delivery.payload.get("MessageID"),
            attempts=delivery.attempts,
            last_answer=delivery.last_answer,
            last_error=delivery.last_error,
        )
