"""The app factory: state is built per app, the webhook client lives in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from postroom.docs import create_fastapi
from postroom.problems import (
    UNSUPPORTED_MEDIA_TYPE,
    VALIDATION_ERROR,
    ProblemError,
    handle_problem,
    problem_schema,
)
from postroom.serve import serve
from postroom.tracing import is_probe
from postroom.web import include_routers, publish_schemas
from sandbox import control, inbox, postmark_api
from sandbox.settings import SandboxSettings
from sandbox.state import Sandbox


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # Postmark clients read ErrorCode from every error body; give them one.
    return JSONResponse(
        {"ErrorCode": exc.status_code, "Message": str(exc.detail)},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    reasons = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
    return JSONResponse({"ErrorCode": 422, "Message": f"Invalid request: {reasons}"}, 422)


def create_app(settings: SandboxSettings | None = None) -> FastAPI:
    settings = settings or SandboxSettings()
    sandbox = Sandbox(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await sandbox.webhooks.start()
        try:
            yield
        finally:
            await sandbox.webhooks.close()

    app = create_fastapi(
        telemetry={"exclude": is_probe},
        title="Postroom Postmark sandbox",
        version="1.0.0",
        summary="A Postmark-compatible API that captures mail, with a dev inbox and faults.",
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    app.state.templates = inbox.create_templates()
    # The Postmark routes come first: `/messages/outbound` must not be read as an inbox page.
    include_routers(
        app, [postmark_api.router, control.router, control.operator_router, inbox.router]
    )
    app.add_exception_handler(ProblemError, handle_problem)
    # The capture API's own errors are problems (its Postmark routes answer as Postmark does).
    problems = [UNSUPPORTED_MEDIA_TYPE, VALIDATION_ERROR, control.MESSAGE_NOT_FOUND]
    publish_schemas(app, {"Problem": problem_schema(problems)})
    # Outermost: a request under another name is answered 400 before any route sees it.
    app.add_middleware(
        TrustedHostMiddleware,
        allowed_hosts=list(settings.sandbox_allowed_hosts),
        www_redirect=False,
    )
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    return app


def main() -> None:
    """Run the sandbox process (`python -m sandbox`)."""
    serve(
        "sandbox",
        SandboxSettings,
        create_app,
        address=lambda s: (s.sandbox_host, s.sandbox_port),
        grace=5,  # answers held back by an injected timeout must not hold up a restart
    )
