"""The app factory: everything with a lifetime is built in the lifespan, nothing at import."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from api.routes import Api, handle_refusal, pages_router, users_router
from api.settings import ApiSettings
from api.slots import SlotReport
from api.users import Refused
from postroom.db import create_engine, create_pool
from postroom.docs import create_fastapi
from postroom.metrics import process_registry
from postroom.middleware import BodySizeLimit, RequestMetrics
from postroom.models import idempotency_keys
from postroom.models import outbox as outbox_table
from postroom.outbox import OutboxWriter
from postroom.retention import Pruner, Retention
from postroom.serve import freeze_heap, serve, worker_app
from postroom.tracing import is_probe
from postroom.web import (
    database_problem,
    include_routers,
    install_problem_handlers,
    operation_id,
    operations_router,
)


async def readiness(request: Request) -> Response | None:
    """Ready: the database answers."""
    api: Api = request.app.state.api
    return await database_problem(api.pool, within=api.settings.database_connect_timeout)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    outbox = OutboxWriter(shards=settings.relay_shards, notify=settings.outbox_notify)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The routes run on a plain asyncpg pool; the engine only prunes.
        pool = await create_pool(settings, application_name="postroom-api")
        app.state.api = Api(pool=pool, outbox=outbox, settings=settings)
        app.state.engine = create_engine(settings, application_name="postroom-api", pool_size=1)
        # Expired idempotency keys (and the answers they keep) go; under Debezium, which marks
        # nothing published, so do outbox rows past their retention.
        retentions = [Retention(idempotency_keys.c.created_at, settings.idempotency_key_ttl)]
        if settings.outbox_publisher == "debezium" and settings.outbox_retention > 0:
            retentions.append(Retention(outbox_table.c.created_at, settings.outbox_retention))
        pruner = Pruner(app.state.engine, retentions, interval=settings.prune_interval)
        pruning = asyncio.create_task(pruner.run(), name="prune")
        reporting = (
            asyncio.create_task(app.state.slots.run(pool), name="slots")
            if settings.outbox_publisher == "debezium"
            else None
        )
        freeze_heap()
        try:
            yield
        finally:
            pruner.stop()
            await pruning
            if reporting is not None:
                app.state.slots.stop()
                await reporting
            await app.state.engine.dispose()
            await pool.close()

    app = create_fastapi(
        telemetry={"exclude": is_probe},
        generate_unique_id_function=operation_id,
        title="Postroom API",
        version="1.0.0",
        summary="User accounts whose every change is committed with the event that announces it.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.outbox = outbox
    app.state.registry = process_registry()
    app.state.slots = SlotReport(app.state.registry, interval=settings.slot_report_interval)
    include_routers(app, [users_router, pages_router, operations_router(readiness)])
    install_problem_handlers(app)
    app.add_exception_handler(Refused, handle_refusal)

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, registry=app.state.registry, access_log=settings.access_log)
    return app


def main() -> None:
    """Run the api process (`python -m api`)."""
    serve(
        "api",
        ApiSettings,
        create_app,
        address=lambda s: (s.api_host, s.api_port),
        workers=lambda s: s.api_workers,
        worker_factory="api.app:create_worker_app",
    )


def create_worker_app() -> FastAPI:
    """The app of one worker under API_WORKERS > 1 (uvicorn calls it in each worker)."""
    app: FastAPI = worker_app("api", ApiSettings, create_app)
    return app
