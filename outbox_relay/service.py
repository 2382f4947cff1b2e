"""The relay process: the relay loop plus its HTTP listener, under uvicorn, whose signal
handling gives the graceful stop (SIGTERM or Ctrl-C: finish the cycle, mark it, release the
shards)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from outbox_relay.metrics import RelayMetrics, http_app
from outbox_relay.relay import Relay
from postroom.settings import RelaySettings


def create_app(settings: RelaySettings) -> Starlette:
    metrics = RelayMetrics()
    relay = Relay(settings, metrics=metrics)
    app = http_app(metrics, ready=lambda: relay.ready)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(relay.run(), name="relay")
        try:
            yield
        finally:
            relay.stop()
            await task

    app.router.lifespan_context = lifespan
    app.state.relay = relay
    return app
