"""What every Postroom HTTP app shares: problem handlers, the dependencies on the app's
engine and tokens, and the Allow header's route table."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from postroom.auth import bearer_scheme, principal_of
from postroom.db import ping
from postroom.problems import (
    ProblemError,
    handle_http_exception,
    handle_problem,
    handle_unexpected,
    handle_validation_error,
    problem_response,
)
from postroom.settings import HttpServiceSettings


def install_problem_handlers(app: FastAPI) -> None:
    """Every error answers `application/problem+json`; database outages answer 503."""
    app.add_exception_handler(ProblemError, handle_problem)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    for unexpected in (SQLAlchemyError, OSError, TimeoutError, Exception):
        app.add_exception_handler(unexpected, handle_unexpected)


def include_routers(app: FastAPI, routers: Iterable[APIRouter]) -> None:
    """Include `routers` and remember each route's methods for 405 answers' Allow header."""
    table = []
    for router in routers:
        app.include_router(router)
        table += [
            (route.path_regex, frozenset(route.methods or ()))
            for route in router.routes
            if isinstance(route, APIRoute)
        ]
    app.state.route_methods = table


async def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> str:
    """The caller's principal (a digest of its token), or a 401 problem."""
    settings: HttpServiceSettings = request.app.state.settings
    return principal_of(credentials, settings.api_tokens)


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
PrincipalDep = Annotated[str, Depends(require_token)]


def only_query(*names: str) -> Any:
    """A dependency refusing query parameters a route does not take (422), so that a typo
    such as `?emial=` is an error instead of a silently unfiltered answer."""
    allowed = frozenset(names)

    async def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            raise RequestValidationError(
                [
                    {
                        "loc": ("query", name),
                        "msg": "Unknown query parameter",
                        "type": "extra_forbidden",
                    }
                    for name in unknown
                ]
            )

    return Depends(check)


class Health(BaseModel):
    status: str


# The OpenAPI entry of a `/metrics` route.
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}
}


async def database_problem(engine: AsyncEngine, *, within: float) -> JSONResponse | None:
    """The 503 problem a readiness check answers when the database does not, else None."""
    try:
        await ping(engine, within=within)
    except Exception:
        return problem_response(
            503,
            "database-unavailable",
            "The database does not answer.",
            headers={"Retry-After": "1"},
        )
    return None


def prometheus(request: Request) -> Response:
    """This process's metrics, from the registry its app factory made."""
    registry: CollectorRegistry = request.app.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
