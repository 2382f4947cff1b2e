"""The app factory: everything with a lifetime is built in the lifespan, nothing at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.routes import public_router, users_router
from outbox_relay.outbox import OutboxWriter
from postroom.db import create_engine
from postroom.middleware import BodySizeLimit, RequestMetrics
from postroom.problems import (
    ProblemError,
    handle_http_exception,
    handle_problem,
    handle_unexpected,
    handle_validation_error,
)
from postroom.settings import ApiSettings


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = create_engine(settings, application_name="postroom-api")
        try:
            yield
        finally:
            await app.state.engine.dispose()

    app = FastAPI(
        title="Postroom API",
        version="1.0.0",
        summary="User accounts whose every change is committed with the event that announces it.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.outbox = OutboxWriter(shards=settings.relay_shards, notify=settings.outbox_notify)
    app.state.registry = CollectorRegistry()
    app.include_router(users_router)
    app.include_router(public_router)
    app.state.route_methods = [
        (route.path_regex, frozenset(route.methods or ()))
        for route in (*users_router.routes, *public_router.routes)
        if isinstance(route, APIRoute)
    ]

    app.add_exception_handler(ProblemError, handle_problem)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    for unavailable in (SQLAlchemyError, OSError, TimeoutError):
        app.add_exception_handler(unavailable, handle_unexpected)
    app.add_exception_handler(Exception, handle_unexpected)

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, registry=app.state.registry, access_log=settings.access_log)
    return app
