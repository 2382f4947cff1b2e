"""The notifier process: the Kafka consumer and the HTTP app, built in one lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from notifier.consumer import Consumer, State
from notifier.delivery import Delivery
from notifier.dlq import DeadLetterWriter
from notifier.metrics import NotifierMetrics
from notifier.postmark import Postmark
from notifier.retries import RetryLoop
from notifier.routes import NOT_READY, readiness, router
from notifier.settings import NotifierSettings
from notifier.store import NotificationStore
from notifier.webhooks import WebhookMetrics, build_router, webhook_schemas
from postroom.db import create_engine
from postroom.docs import create_fastapi
from postroom.metrics import process_registry
from postroom.middleware import BodySizeLimit, RequestMetrics
from postroom.models import webhook_receipts
from postroom.outbox import OutboxWriter
from postroom.retention import Pruner, Retention
from postroom.serve import freeze_heap, serve
from postroom.tracing import is_probe
from postroom.web import (
    include_routers,
    install_problem_handlers,
    operation_id,
    operations_router,
    publish_schemas,
)


def create_app(settings: NotifierSettings | None = None, *, consume: bool = True) -> FastAPI:
    settings = settings or NotifierSettings()
    registry = process_registry()
    metrics = NotifierMetrics(registry)
    outbox = OutboxWriter(shards=settings.relay_shards, notify=settings.outbox_notify)
    # The catalogue and every template checked now: a problem stops the start, in one line.
    emails = settings.load_emails()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings, application_name="postroom-notifier")
        postmark = Postmark(settings)
        dead_letters = DeadLetterWriter(settings)
        store = NotificationStore(
            engine,
            outbox,
            lease=settings.notifier_lease,
            settle=settings.notifier_search_settle,
            reach=settings.call_reach,
            search_window=settings.search_window,
        )
        delivery = Delivery(
            settings,
            store=store,
            postmark=postmark,
            dead_letters=dead_letters,
            metrics=metrics,
            emails=emails,
        )
        consumer = Consumer(settings, delivery=delivery, dead_letters=dead_letters, metrics=metrics)
        retries = RetryLoop(
            settings,
            delivery=delivery,
            store=store,
            halt=consumer.halt,
            halted=lambda: consumer.state is State.HALTED,
        )
        store.on_hand_back = retries.wake
        app.state.engine = engine
        app.state.postmark = postmark
        app.state.delivery = delivery
        app.state.consumer = consumer
        pruner = Pruner(
            engine,
            [Retention(webhook_receipts.c.received_at, settings.webhook_receipt_retention)],
            interval=settings.prune_interval,
        )
        tasks = [asyncio.create_task(pruner.run(), name="prune")]
        if consume:
            tasks += [
                asyncio.create_task(consumer.run(), name="consumer"),
                asyncio.create_task(retries.run(), name="retries"),
            ]
        freeze_heap()
        try:
            yield
        finally:
            consumer.stop()
            retries.stop()
            pruner.stop()
            await asyncio.gather(*tasks)
            await dead_letters.stop()
            postmark.close()
            await engine.dispose()

    app = create_fastapi(
        telemetry={"exclude": is_probe},
        generate_unique_id_function=operation_id,
        title="Postroom notifier",
        version="1.0.0",
        summary="Emails that follow from user events, sent once through Postmark.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.outbox = outbox
    app.state.registry = registry
    app.state.metrics = metrics
    webhooks = build_router(settings, outbox=outbox, metrics=WebhookMetrics(registry))
    include_routers(app, [router, webhooks, operations_router(readiness, NOT_READY)])
    install_problem_handlers(app)
    publish_schemas(app, webhook_schemas())
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, registry=registry, access_log=settings.access_log)
    return app


def main() -> None:
    """Run the notifier process (`python -m notifier`)."""
    serve(
        "notifier",
        NotifierSettings,
        create_app,
        address=lambda s: (s.notifier_host, s.notifier_port),
    )
