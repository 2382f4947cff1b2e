"""What every Postroom HTTP app shares: problem handlers, the dependencies on the app's
engine, settings, outbox writer and tokens, the Allow header's route table, JSON bodies'
media type, and the operations routes (`/healthz`, `/readyz`, `/metrics`)."""

from __future__ import annotations

import email.message
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request, Response, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from postroom.auth import bearer_scheme, principal_of
from postroom.db import ping
from postroom.middleware import BodySizeLimit
from postroom.outbox import OutboxWriter
from postroom.problems import (
    BODY_TOO_LARGE,
    DATABASE_UNAVAILABLE,
    INTERNAL_ERROR,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPES,
    REQUEST_HEADER_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    ProblemError,
    ProblemType,
    handle_http_exception,
    handle_problem,
    handle_unexpected,
    handle_validation_error,
    problem_response,
    problem_responses,
    problem_schema,
)
from postroom.settings import CommonSettings, HttpServiceSettings


def publish_schemas(app: FastAPI, schemas: Mapping[str, dict[str, Any]]) -> None:
    """Add `schemas` to the components of `app`'s OpenAPI document, for the `$ref`s that
    routes write by hand (FastAPI publishes only the models routes parse or answer with)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


# What any request may be answered, whatever its route: no such path or method, a head too
# large (before the app runs) and a fault of ours.
ANY_REQUEST = (NOT_FOUND, METHOD_NOT_ALLOWED, REQUEST_HEADER_TOO_LARGE, INTERNAL_ERROR)


def answered_problems(app: FastAPI, document: Mapping[str, Any]) -> list[ProblemType]:
    """The problem types `app` can answer: those its routes document (`problem_responses`),
    those any request may get, and a body too large where the app limits bodies."""
    named = {
        slug
        for item in document.get("paths", {}).values()
        for operation in item.values()
        for response in operation.get("responses", {}).values()
        for slug in response.get("content", {}).get(PROBLEM_MEDIA_TYPE, {}).get("examples", {})
    }
    anywhere = set(ANY_REQUEST)
    if any(getattr(middleware, "cls", None) is BodySizeLimit for middleware in app.user_middleware):
        anywhere.add(BODY_TOO_LARGE)
    return [kind for kind in PROBLEM_TYPES.values() if kind.slug in named or kind in anywhere]


def install_problem_handlers(app: FastAPI) -> None:
    """Every error answers `application/problem+json`; database outages answer 503. The
    OpenAPI document publishes the Problem schema once, for every problem response to refer
    to (`problem_responses`), listing the types this app can answer and no other."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = problem_schema(answered_problems(app, document))
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(ProblemError, handle_problem)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    for unexpected in (
        SQLAlchemyError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        OSError,
        TimeoutError,
        Exception,
    ):
        app.add_exception_handler(unexpected, handle_unexpected)


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operation id: its function's name in camelCase (`create_user` ->
    `createUser`), stable whatever its path or method."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON: `application/json` or `application/<x>+json`, with
    any parameters (`; charset=utf-8`). The same rule FastAPI parses bodies by."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def reads_json(route: APIRoute) -> bool:
    """Whether FastAPI reads `route`'s body as JSON (a body parameter that is no form)."""
    field = route.body_field
    return field is not None and not isinstance(field.field_info, params.Form)


class JsonBodyRoute(APIRoute):
    """A route that reads its body as JSON answers a body of any other media type, or of
    none named, with a 415 problem before reading it (FastAPI would hand the raw bytes to
    the model: a 422 that says "a valid dictionary"), and documents that answer."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if reads_json(self):
            self.responses = {**problem_responses(UNSUPPORTED_MEDIA_TYPE), **self.responses}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not reads_json(self):
            return handler

        async def json_only(request: Request) -> Response:
            # An empty body is no body: the route's own answer (a required body is missing).
            if await request.body() and not is_json(request.headers.get("content-type")):
                raise ProblemError(
                    UNSUPPORTED_MEDIA_TYPE,
                    "Send the body as JSON, with Content-Type: application/json.",
                )
            return await handler(request)

        return json_only


def include_routers(app: FastAPI, routers: Iterable[APIRouter]) -> None:
    """Include `routers` and remember each route's methods for 405 answers' Allow header.
    Every route that reads a JSON body must be a `JsonBodyRoute` (its router's
    `route_class`), so that none forgets the 415."""
    table = []
    for router in routers:
        unchecked = [
            route.path
            for route in router.routes
            if isinstance(route, APIRoute)
            and not isinstance(route, JsonBodyRoute)
            and reads_json(route)
        ]
        if unchecked:
            raise TypeError(f"{', '.join(unchecked)} read JSON: give the router JsonBodyRoute")
        app.include_router(router)
        table += [
            (route.path_regex, frozenset(route.methods or ()))
            for route in router.routes
            if isinstance(route, APIRoute)
        ]
    app.state.route_methods = [*getattr(app.state, "route_methods", []), *table]


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


async def get_settings(request: Request) -> Any:
    """The settings the app was built with (each process names its own class)."""
    return request.app.state.settings


async def get_outbox(request: Request) -> OutboxWriter:
    """The app's outbox writer: use cases add their events to the caller's transaction."""
    outbox: OutboxWriter = request.app.state.outbox
    return outbox


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
PrincipalDep = Annotated[str, Depends(require_token)]
OutboxDep = Annotated[OutboxWriter, Depends(get_outbox)]


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


# Why a process is not ready (a problem response), or None when it is.
Readiness = Callable[[Request], Awaitable[Response | None]]


async def database_problem(db: AsyncEngine | asyncpg.Pool, *, within: float) -> JSONResponse | None:
    """The 503 problem a readiness check answers when the database does not, else None."""
    try:
        await ping(db, within=within)
    except Exception:
        return problem_response(
            DATABASE_UNAVAILABLE,
            "The database does not answer.",
            headers={"Retry-After": "1"},
        )
    return None


async def database_ready(request: Request) -> Response | None:
    """Readiness of a process that needs only its database."""
    settings: CommonSettings = request.app.state.settings
    return await database_problem(
        request.app.state.engine, within=settings.database_connect_timeout
    )


def operations_router(
    readiness: Readiness, not_ready: Iterable[ProblemType] = (DATABASE_UNAVAILABLE,)
) -> APIRouter:
    """`/healthz` (the process answers), `/readyz` (`readiness` finds nothing wrong, else one
    of the `not_ready` problems) and `/metrics` (the registry in `app.state.registry`): the
    same three routes in every process."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @router.get("/readyz", response_model=Health, responses=problem_responses(*not_ready))
    async def readyz(request: Request) -> Any:
        """Readiness: this process can do its work."""
        return await readiness(request) or Health(status="ready")

    # Uptime checkers that ask with HEAD get the same status, without the body (uvicorn
    # drops it); left out of the schema, which would list each operation twice.
    router.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)
    router.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this process."""
        registry: CollectorRegistry = request.app.state.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
