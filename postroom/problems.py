"""`application/problem+json` answers (RFC 9457) with stable `type` URIs, never a stack trace."""

from __future__ import annotations

import traceback
from http import HTTPStatus
from typing import Any

import asyncpg
import structlog
from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from postroom.db import is_unavailable

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_PREFIX = "urn:postroom:problem:"


class Problem(BaseModel):
    """An error, as RFC 9457 describes it."""

    type: str = Field(examples=[f"{_TYPE_PREFIX}email-taken"])
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Field-level reasons, for validation problems."
    )


class ProblemError(Exception):
    """Raise to answer with a problem; the transaction around it rolls back."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or slug)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers


def problem_response(
    status: int,
    slug: str,
    detail: str | None = None,
    *,
    title: str | None = None,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": _TYPE_PREFIX + slug,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def handle_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        exc.status,
        exc.slug,
        exc.detail,
        title=exc.title,
        instance=request.url.path,
        headers=exc.headers,
    )


_HTTP_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
}


def _allowed_methods(request: Request) -> str:
    # Starlette names only the first route that matched the path; a path served by several
    # routes (GET, PATCH and DELETE of one user) allows the methods of all of them.
    path = request.url.path
    methods: set[str] = set()
    for pattern, route_methods in request.app.state.route_methods:
        if pattern.match(path):
            methods |= route_methods
    return ", ".join(sorted(methods))


async def handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = _HTTP_SLUGS.get(exc.status_code, f"http-{exc.status_code}")
    detail: str | None = exc.detail if isinstance(exc.detail, str) else None
    if detail == HTTPStatus(exc.status_code).phrase:
        detail = None
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return problem_response(
        exc.status_code, slug, detail, instance=request.url.path, headers=headers or None
    )


def _clean_error(error: dict[str, Any]) -> dict[str, Any]:
    # Echo where and why, never the rejected input itself: it may be a secret or a huge body.
    # Validator chains show up in `loc` as "function-after[...]": keep the field path only.
    loc = [part for part in error.get("loc", ()) if not (isinstance(part, str) and "[" in part)]
    return {"loc": loc, "msg": error.get("msg"), "type": error.get("type")}


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_clean_error(e) for e in jsonable_encoder(exc.errors())]
    return problem_response(
        422,
        "validation-error",
        "The request is not valid; see errors.",
        title="Unprocessable Content",
        instance=request.url.path,
        errors=errors,
    )


_PROBLEM_SCHEMA = Problem.model_json_schema()


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems a route can answer with."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


log = structlog.get_logger("postroom.http")


def _origin(exc: BaseException) -> str:
    """The project frame nearest to where `exc` was raised, as file:line."""
    place = "unknown"
    for frame, line in traceback.walk_tb(exc.__traceback__):
        if "site-packages" not in frame.f_code.co_filename:
            place = "/".join(frame.f_code.co_filename.rsplit("/", 2)[-2:]) + f":{line}"
    return place


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    if is_unavailable(exc):
        log.warning("database unavailable", path=request.url.path, error=type(exc).__name__)
        return problem_response(
            503,
            "database-unavailable",
            "The database does not answer; try again shortly.",
            title="Service Unavailable",
            instance=request.url.path,
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        # Never the whole error: its DETAIL quotes values (the duplicate key), and so do the
        # messages of data exceptions (SQLSTATE class 22) and of asyncpg's own argument
        # checks. The server's primary message of any other error is kept.
        sqlstate = getattr(exc, "sqlstate", None) or ""
        message = None
        if isinstance(exc, asyncpg.PostgresError) and not sqlstate.startswith("22"):
            message = exc.message
        log.error(
            "unexpected database error",
            path=request.url.path,
            error=type(exc).__name__,
            sqlstate=sqlstate or None,
            message=message,
            at=_origin(exc),
        )
    else:
        log.error("unexpected error", path=request.url.path, exc_info=exc)
    return problem_response(
        500, "internal-error", "Something went wrong on our side.", instance=request.url.path
    )
