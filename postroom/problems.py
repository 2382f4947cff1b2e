"""`application/problem+json` answers (RFC 9457) with stable `type` URIs, never a stack trace."""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
TYPE_PREFIX = "urn:postroom:problem:"
# Where the OpenAPI documents publish the Problem schema, once.
PROBLEM_REF = "#/components/schemas/Problem"


@dataclass(frozen=True, slots=True)
class ProblemType:
    """One kind of problem: a stable `type` URI with its status and title, and when it is
    answered (for the OpenAPI documents)."""

    slug: str
    status: int
    title: str
    about: str

    @property
    def uri(self) -> str:
        return TYPE_PREFIX + self.slug


# Every problem type any Postroom process answers with, by slug: the handlers raise these
# and the OpenAPI documents list them, so the two cannot drift apart.
PROBLEM_TYPES: dict[str, ProblemType] = {}


def _phrase(status: int) -> str:
    """The status's reason phrase, by RFC 9110's names (Python 3.11 has older ones)."""
    return {413: "Content Too Large", 422: "Unprocessable Content"}.get(
        status, HTTPStatus(status).phrase
    )


def _known(slug: str, status: int, about: str, *, title: str | None = None) -> ProblemType:
    if slug in PROBLEM_TYPES:
        raise ValueError(f"problem type {slug} is defined twice")
    kind = ProblemType(slug, status, title or _phrase(status), about)
    PROBLEM_TYPES[slug] = kind
    return kind


# Any route.
BAD_REQUEST = _known("bad-request", 400, "The body could not be read (for example, not UTF-8).")
UNAUTHORIZED = _known("unauthorized", 401, "The credentials are missing or wrong.")
NOT_FOUND = _known("not-found", 404, "No route has this path.")
METHOD_NOT_ALLOWED = _known(
    "method-not-allowed", 405, "The path does not take this method; `Allow` names those it does."
)
BODY_TOO_LARGE = _known("body-too-large", 413, "The body is larger than MAX_BODY_BYTES.")
UNSUPPORTED_MEDIA_TYPE = _known(
    "unsupported-media-type", 415, "The body is not in a media type the route reads."
)
VALIDATION_ERROR = _known(
    "validation-error",
    422,
    "A parameter or the body is not valid; `errors` says where and why.",
)
REQUEST_HEADER_TOO_LARGE = _known(
    "request-header-too-large",
    431,
    "The request line and headers are too large; answered before any route sees the request.",
)
INTERNAL_ERROR = _known("internal-error", 500, "A fault on our side; the logs say more.")
DATABASE_UNAVAILABLE = _known(
    "database-unavailable", 503, "The database does not answer; retry after `Retry-After`."
)
# The api.
USER_NOT_FOUND = _known("user-not-found", 404, "No user has this id.", title="User not found")
EMAIL_TAKEN = _known(
    "email-taken",
    409,
    "Another user has this email address, in any letter case.",
    title="Email address taken",
)
USER_DELETED = _known(
    "user-deleted",
    410,
    "A replay (same `Idempotency-Key`) of a request about a user deleted since: nothing of "
    "them is shown.",
)
IDEMPOTENCY_KEY_REUSED = _known(
    "idempotency-key-reused",
    422,
    "This `Idempotency-Key` was already used for a different request.",
    title="Idempotency key reused",
)
TOKEN_INVALID = _known(
    "token-invalid",
    400,
    "The verification token is not one of ours, or was altered.",
    title="Invalid verification token",
)
TOKEN_EXPIRED = _known(
    "token-expired", 410, "The verification link has expired.", title="Verification link expired"
)
TOKEN_SUPERSEDED = _known(
    "token-superseded",
    410,
    "The link is for an address the account no longer has, or for a deleted account.",
    title="Verification link no longer valid",
)
ALREADY_VERIFIED = _known(
    "already-verified",
    409,
    "The user's email address is verified already: no new link is sent.",
    title="Email address already verified",
)
TOO_MANY_VERIFICATION_REQUESTS = _known(
    "too-many-verification-requests",
    429,
    "New verification links are limited per user (VERIFICATION_RESEND_INTERVAL, "
    "VERIFICATION_RESEND_DAILY); ask again after `Retry-After` seconds.",
    title="Too many verification requests",
)
# The notifier.
NOTIFICATION_NOT_FOUND = _known(
    "notification-not-found", 404, "No notification has this id.", title="Notification not found"
)
INVALID_CURSOR = _known(
    "invalid-cursor",
    422,
    "The cursor is not one this list gave with these filters (or was altered).",
    title="Invalid cursor",
)
ALREADY_SUPPRESSED = _known(
    "already-suppressed", 409, "The address is already suppressed.", title="Already suppressed"
)
NOT_SUPPRESSED = _known(
    "not-suppressed", 404, "The address is not suppressed.", title="Not suppressed"
)
SPAM_COMPLAINT = _known(
    "spam-complaint",
    409,
    "The recipient reported spam: this suppression cannot be lifted.",
    title="Cannot lift a spam complaint",
)
POSTMARK_REFUSED = _known(
    "postmark-refused", 502, "Postmark did not reactivate the address; nothing changed."
)
POSTMARK_UNAVAILABLE = _known(
    "postmark-unavailable",
    503,
    "Postmark did not answer within POSTMARK_TIMEOUT, or is unavailable; nothing changed "
    "here. Try again later (reactivating twice is harmless).",
    title="Postmark unavailable",
)
INVALID_WEBHOOK = _known(
    "invalid-webhook", 400, "The body is not a Postmark webhook, or lacks what its record needs."
)
CONSUMER_HALTED = _known(
    "consumer-halted", 503, "The notifier stopped consuming (Postmark refused its server token)."
)
CONSUMER_NOT_READY = _known("consumer-not-ready", 503, "Not consuming from Kafka yet.")
# The relay.
RELAY_NOT_READY = _known("relay-not-ready", 503, "Not connected to PostgreSQL and Kafka yet.")


class Problem(BaseModel):
    """An error, as RFC 9457 describes it."""

    type: str = Field(
        description="What went wrong, as a stable URI: one of those listed above (more may "
        "come; a client that does not know one goes by `status`).",
    )
    title: str = Field(description="The same for every problem of this type.")
    status: int
    detail: str | None = None
    instance: str | None = Field(default=None, description="The path that was asked for.")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Field-level reasons, for validation problems."
    )


def problem_schema(kinds: Iterable[ProblemType]) -> dict[str, Any]:
    """The Problem component of an OpenAPI document, listing `kinds`: the types its process
    answers with."""
    kinds = list(kinds)
    schema = Problem.model_json_schema()
    schema["properties"]["type"]["examples"] = [kind.uri for kind in kinds]
    schema["description"] = "\n".join(
        [
            "An error, as RFC 9457 describes it. Its `type` is one of:",
            "",
            *(f"- `{kind.uri}` ({kind.status} {kind.title}): {kind.about}" for kind in kinds),
        ]
    )
    return schema


class ProblemError(Exception):
    """Raise to answer with a problem; the transaction around it rolls back."""

    def __init__(
        self, kind: ProblemType, detail: str | None = None, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail or kind.slug)
        self.kind = kind
        self.detail = detail
        self.headers = headers

    @property
    def status(self) -> int:
        return self.kind.status


def problem_response(
    kind: ProblemType,
    detail: str | None = None,
    *,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": kind.uri, "title": kind.title, "status": kind.status}
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(
        body, status_code=kind.status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


async def handle_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.kind, exc.detail, instance=request.url.path, headers=exc.headers)


_HTTP_PROBLEMS = {
    kind.status: kind
    for kind in (
        BAD_REQUEST,
        UNAUTHORIZED,
        NOT_FOUND,
        METHOD_NOT_ALLOWED,
        BODY_TOO_LARGE,
        UNSUPPORTED_MEDIA_TYPE,
    )
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
    status = exc.status_code
    kind = _HTTP_PROBLEMS.get(status) or ProblemType(f"http-{status}", status, _phrase(status), "")
    detail: str | None = exc.detail if isinstance(exc.detail, str) else None
    if detail == HTTPStatus(status).phrase:
        detail = None
    headers = dict(exc.headers or {})
    if status == 405:
        headers["Allow"] = _allowed_methods(request)
    return problem_response(kind, detail, instance=request.url.path, headers=headers or None)


def _clean_error(error: dict[str, Any]) -> dict[str, Any]:
    # Echo where and why, never the rejected input itself: it may be a secret or a huge body.
    # Validator chains show up in `loc` as "function-after[...]": keep the field path only.
    loc = [part for part in error.get("loc", ()) if not (isinstance(part, str) and "[" in part)]
    return {"loc": loc, "msg": error.get("msg"), "type": error.get("type")}


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_clean_error(e) for e in jsonable_encoder(exc.errors())]
    return problem_response(
        VALIDATION_ERROR,
        "The request is not valid; see errors.",
        instance=request.url.path,
        errors=errors,
    )


def problem_responses(
    *kinds: ProblemType, headers: Mapping[int, dict[str, Any]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems a route can answer with: per status, the types it
    answers (described, and one example each) and the Problem component; `headers` adds
    response headers to a status."""
    by_status: dict[int, list[ProblemType]] = {}
    for kind in kinds:
        by_status.setdefault(kind.status, []).append(kind)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, of_status in sorted(by_status.items()):
        lines = [f"{_phrase(status)}, as one of these problem types:", ""]
        lines += [f"- `{kind.uri}`: {kind.about}" for kind in of_status]
        examples = {
            kind.slug: {
                "summary": kind.title,
                "value": {"type": kind.uri, "title": kind.title, "status": status},
            }
            for kind in of_status
        }
        responses[status] = {
            "description": "\n".join(lines),
            "content": {
                PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}, "examples": examples}
            },
        }
        if headers and status in headers:
            responses[status]["headers"] = headers[status]
    return responses


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
            DATABASE_UNAVAILABLE,
            "The database does not answer; try again shortly.",
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
        INTERNAL_ERROR, "Something went wrong on our side.", instance=request.url.path
    )
