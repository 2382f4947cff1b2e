"""The relay process: the relay loop plus its HTTP listener (`/healthz`, `/readyz`,
`/metrics`), under uvicorn, whose signal handling gives the graceful stop (SIGTERM or Ctrl-C:
finish the cycle, mark it, release the shards)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from outbox_relay.metrics import RelayMetrics
from outbox_relay.relay import Relay
from outbox_relay.settings import RelaySettings
from postroom.docs import create_fastapi
from postroom.problems import RELAY_NOT_READY, problem_response
from postroom.serve import freeze_heap, serve
from postroom.tracing import is_probe
from postroom.web import (
    include_routers,
    install_problem_handlers,
    operation_id,
    operations_router,
)


async def readiness(request: Request) -> Response | None:
    """Ready once connected to PostgreSQL and Kafka, and while Kafka takes its records."""
    relay: Relay = request.app.state.relay
    if relay.ready:
        return None
    detail = (
        "Kafka has refused or not answered the relay's sends since "
        f"{time.monotonic() - relay.kafka_failing_since:.0f} s ago."
        if relay.kafka_failing_since is not None
        else "Not connected to PostgreSQL and Kafka yet."
    )
    return problem_response(RELAY_NOT_READY, detail, headers={"Retry-After": "1"})


def create_app(settings: RelaySettings) -> FastAPI:
    metrics = RelayMetrics()
    relay = Relay(settings, metrics=metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(relay.run(), name="relay")
        freeze_heap()
        try:
            yield
        finally:
            relay.stop()
            await task

    app = create_fastapi(
        telemetry={"exclude": is_probe},
        generate_unique_id_function=operation_id,
        title="Postroom outbox relay",
        version="1.0.0",
        summary="Committed outbox rows to Kafka, in order per aggregate.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.relay = relay
    app.state.registry = metrics.registry
    include_routers(app, [operations_router(readiness, [RELAY_NOT_READY])])
    install_problem_handlers(app)
    return app


def main() -> None:
    """Run the relay process (`python -m outbox_relay`)."""
    serve(
        "relay",
        RelaySettings,
        create_app,
        address=lambda s: (s.relay_metrics_host, s.relay_metrics_port),
    )
