"""The `/v1` routes and the verification pages."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs

import asyncpg
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials

from api import idempotency, pages
from api import users as use_cases
from api.pages import STYLESHEET_PATH
from api.schemas import (
    EmailVerificationRequest,
    UserCreate,
    UserOut,
    UserPatch,
    VerificationRequested,
)
from api.settings import ApiSettings
from postroom import problems, tokens
from postroom.auth import bearer_scheme, principal_of
from postroom.db import Connection, is_unavailable
from postroom.outbox import OutboxWriter
from postroom.problems import ProblemError, handle_problem, problem_responses
from postroom.web import JsonBodyRoute


@dataclass(frozen=True, slots=True)
class Api:
    """What every route works with, built once per app (`app.state.api`)."""

    pool: asyncpg.Pool
    outbox: OutboxWriter
    settings: ApiSettings

    @property
    def brand(self) -> pages.PageBrand:
        return pages.PageBrand(self.settings.brand_name, self.settings.brand_support_email)

    def connection(self) -> AbstractAsyncContextManager[Connection]:
        """A connection of the pool; waits up to DATABASE_CONNECT_TIMEOUT for one (then
        TimeoutError: a 503)."""
        return self.pool.acquire(timeout=self.settings.database_connect_timeout)


@dataclass(frozen=True, slots=True)
class Caller:
    """A request whose bearer token was accepted: who sent it, and the app's parts."""

    principal: str
    api: Api


async def _api(request: Request) -> Api:
    api: Api = request.app.state.api
    return api


async def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Caller:
    """The caller (a 401 problem without a valid token) and the app's parts, in one
    dependency: each one FastAPI resolves costs time on every request."""
    api: Api = request.app.state.api
    return Caller(principal_of(credentials, api.settings.api_tokens), api)


def conn_transaction(conn: Connection) -> AbstractAsyncContextManager[Any]:
    return conn.transaction()


def _no_transaction(conn: Connection) -> AbstractAsyncContextManager[Any]:
    return nullcontext()


ApiDep = Annotated[Api, Depends(_api)]
CallerDep = Annotated[Caller, Depends(_caller)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Makes a retry safe: a repeat with the same key and the same body, within "
        "IDEMPOTENCY_KEY_TTL, writes nothing and replays the first answer (with "
        "`Idempotent-Replayed: true`); the same key with another body is a 422 "
        "`idempotency-key-reused` problem.",
        min_length=1,
        max_length=idempotency.MAX_KEY_LENGTH,
        pattern=idempotency.KEY_PATTERN,
    ),
]

# The use cases' refusals, as the problems this API answers them with.
REFUSALS: dict[type[use_cases.Refused], ProblemError] = {
    use_cases.UserNotFound: ProblemError(problems.USER_NOT_FOUND, "No user has this id."),
    use_cases.EmailTaken: ProblemError(
        problems.EMAIL_TAKEN, "Another user already has this email address."
    ),
    use_cases.AlreadyVerified: ProblemError(
        problems.ALREADY_VERIFIED, "This user's email address is verified already."
    ),
    use_cases.LinkSuperseded: ProblemError(
        problems.TOKEN_SUPERSEDED,
        "This link is for an address the account no longer has, or a deleted account.",
    ),
}
# What every /v1 route that needs the bearer token, and every route that reads a JSON body,
# may answer.
AUTHENTICATED = (problems.UNAUTHORIZED, problems.DATABASE_UNAVAILABLE)
JSON_BODY = (problems.BAD_REQUEST, problems.BODY_TOO_LARGE, problems.VALIDATION_ERROR)
# A POST that takes an Idempotency-Key: the key reused for another body, and a replay about a
# user deleted since (which carries Idempotent-Replayed too).
IDEMPOTENT = (problems.IDEMPOTENCY_KEY_REUSED, problems.USER_DELETED)
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the "
        "same Idempotency-Key (nothing was written this time); absent otherwise.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


async def handle_refusal(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, use_cases.Refused)
    if isinstance(exc, use_cases.AskedTooOften):
        problem = ProblemError(
            problems.TOO_MANY_VERIFICATION_REQUESTS,
            f"A new link was asked for too recently; ask again in {exc.retry_after} s.",
            headers={"Retry-After": str(exc.retry_after)},
        )
        return await handle_problem(request, problem)
    return await handle_problem(request, REFUSALS[type(exc)])


users_router = APIRouter(prefix="/v1", tags=["users"], route_class=JsonBodyRoute)
pages_router = APIRouter()


def _replay(answer: idempotency.StoredAnswer) -> JSONResponse:
    return JSONResponse(
        answer.body,
        status_code=answer.status_code,
        headers={**answer.headers, "Idempotent-Replayed": "true"},
    )


@users_router.post(
    "/users",
    status_code=201,
    response_model=UserOut,
    responses={
        201: {
            "description": "Created",
            "headers": {
                "Location": {"description": "The user's URL.", "schema": {"type": "string"}},
                **REPLAYED,
            },
        },
        **problem_responses(
            *AUTHENTICATED, *JSON_BODY, *IDEMPOTENT, problems.EMAIL_TAKEN, headers={410: REPLAYED}
        ),
    },
)
async def create_user(
    body: UserCreate,
    request: Request,
    response: Response,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Register a user; emits `user.registered`."""
    api = caller.api
    guard = idempotency.Guard.of(
        method="POST",
        path=request.url.path,
        body=body,
        principal=caller.principal,
        key=idempotency_key,
        ttl=api.settings.idempotency_key_ttl,
    )
    # Registering is one statement, atomic on its own; a key adds statements that must commit
    # with it, in a transaction.
    atomic = conn_transaction if idempotency_key is not None else _no_transaction
    async with api.connection() as conn, atomic(conn):
        if (stored := await guard.claim_or_replay(conn)) is not None:
            return _replay(stored)
        row = await use_cases.register_user(
            conn, email=body.email, name=body.name, outbox=api.outbox, locale=body.locale
        )
        user = UserOut.from_row(row)
        location = f"/v1/users/{row.id}"
        await guard.remember(
            conn,
            idempotency.StoredAnswer(201, user.model_dump(mode="json"), {"Location": location}),
        )
    response.headers["Location"] = location
    return user


@users_router.get(
    "/users/{user_id}",
    response_model=UserOut,
    responses=problem_responses(*AUTHENTICATED, problems.USER_NOT_FOUND, problems.VALIDATION_ERROR),
)
async def get_user(user_id: uuid.UUID, caller: CallerDep) -> Any:
    """Read one user."""
    async with caller.api.connection() as conn:
        return UserOut.from_row(await use_cases.get_user(conn, user_id=user_id))


@users_router.patch(
    "/users/{user_id}",
    response_model=UserOut,
    responses=problem_responses(
        *AUTHENTICATED, *JSON_BODY, problems.USER_NOT_FOUND, problems.EMAIL_TAKEN
    ),
)
async def update_user(
    user_id: uuid.UUID,
    body: UserPatch,
    caller: CallerDep,
) -> Any:
    """Change name, email and/or locale; emits `user.updated`, and `user.email_changed` when
    the address changes (its verification is reset)."""
    api = caller.api
    async with api.connection() as conn:  # the use case makes the change atomic
        row = await use_cases.update_user(
            conn,
            user_id=user_id,
            name=body.name,
            email=body.email,
            outbox=api.outbox,
            locale=body.locale,
            clear_locale=body.clears_locale,
        )
    return UserOut.from_row(row)


@users_router.delete(
    "/users/{user_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(*AUTHENTICATED, problems.USER_NOT_FOUND, problems.VALIDATION_ERROR),
)
async def delete_user(user_id: uuid.UUID, caller: CallerDep) -> Response:
    """Delete a user; emits `user.deleted`."""
    api = caller.api
    async with api.connection() as conn, conn.transaction():
        await use_cases.delete_user(conn, user_id=user_id, outbox=api.outbox)
    return Response(status_code=204)


@users_router.post(
    "/users/{user_id}/verification-emails",
    status_code=202,
    response_model=VerificationRequested,
    responses={
        202: {"description": "A new link is on its way", "headers": REPLAYED},
        **problem_responses(
            *AUTHENTICATED,
            *IDEMPOTENT,
            problems.USER_NOT_FOUND,
            problems.ALREADY_VERIFIED,
            problems.TOO_MANY_VERIFICATION_REQUESTS,
            problems.VALIDATION_ERROR,
            headers={
                410: REPLAYED,
                429: {
                    "Retry-After": {
                        "description": "Seconds until a new link may be asked for.",
                        "schema": {"type": "integer"},
                    }
                },
            },
        ),
    },
)
async def request_verification_email(
    user_id: uuid.UUID,
    request: Request,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Send a new verification link to the user's current address; emits
    `user.verification_requested`. At most one per VERIFICATION_RESEND_INTERVAL and
    VERIFICATION_RESEND_DAILY a day per user (429 with `Retry-After`); 409 when verified."""
    api = caller.api
    guard = idempotency.Guard.of(
        method="POST",
        path=request.url.path,
        body=None,
        principal=caller.principal,
        key=idempotency_key,
        ttl=api.settings.idempotency_key_ttl,
    )
    async with api.connection() as conn, conn.transaction():
        if (stored := await guard.claim_or_replay(conn)) is not None:
            return _replay(stored)
        user, requested_at = await use_cases.request_verification(
            conn,
            user_id=user_id,
            outbox=api.outbox,
            interval=api.settings.verification_resend_interval,
            daily=api.settings.verification_resend_daily,
        )
        answer = VerificationRequested(user_id=user.id, email=user.email, requested_at=requested_at)
        await guard.remember(
            conn, idempotency.StoredAnswer(202, answer.model_dump(mode="json"), {})
        )
    return answer


def _claim_from(token: str, settings: ApiSettings) -> tokens.VerificationClaim:
    try:
        return tokens.read_token(
            settings.email_token_secret.get_secret_value(),
            token,
            max_age=settings.email_token_max_age,
        )
    except tokens.TokenExpired:
        raise ProblemError(
            problems.TOKEN_EXPIRED, "This verification link has expired; ask for a new one."
        ) from None
    except tokens.TokenInvalid:
        raise ProblemError(
            problems.TOKEN_INVALID, "This verification token is not valid."
        ) from None


@users_router.post(
    "/email-verifications",
    response_model=UserOut,
    responses={
        200: {"description": "Verified", "headers": REPLAYED},
        **problem_responses(
            *JSON_BODY,
            *IDEMPOTENT,
            problems.TOKEN_INVALID,
            problems.TOKEN_EXPIRED,
            problems.TOKEN_SUPERSEDED,
            problems.DATABASE_UNAVAILABLE,
            headers={410: REPLAYED},
        ),
    },
    openapi_extra={"security": []},
)
async def verify_email(
    body: EmailVerificationRequest,
    request: Request,
    api: ApiDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Mark an address verified with the signed token from the email; emits
    `user.email_verified`. The token is the credential: no bearer token needed."""
    claim = _claim_from(body.token, api.settings)
    guard = idempotency.Guard.of(
        method="POST",
        path=request.url.path,
        body=body,
        principal=f"user:{claim.user_id}",
        key=idempotency_key,
        ttl=api.settings.idempotency_key_ttl,
    )
    async with api.connection() as conn, conn.transaction():
        if (stored := await guard.claim_or_replay(conn)) is not None:
            return _replay(stored)
        row = await use_cases.verify_email(conn, claim=claim, outbox=api.outbox)
        user = UserOut.from_row(row)
        await guard.remember(conn, idempotency.StoredAnswer(200, user.model_dump(mode="json"), {}))
    return user


_HTML = {"text/html": {"schema": {"type": "string"}}}
# The pages' forms are read by hand, so no input can turn them into a JSON validation error.
_FORM: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": {"token": {"type": "string"}}}
            }
        },
    }
}
MAX_TOKEN = 1024


@pages_router.get(
    "/verify-email",
    response_class=HTMLResponse,
    tags=["users"],
    responses={
        200: {"content": _HTML, "description": "The address, and a button that verifies it"},
        400: {"content": _HTML, "description": "Missing or invalid token"},
        410: {"content": _HTML, "description": "Expired or superseded link"},
        503: {"content": _HTML, "description": "Database unavailable"},
    },
    # Read by hand so that no input can turn this page into a JSON validation error.
    openapi_extra={
        "parameters": [
            {"name": "token", "in": "query", "required": False, "schema": {"type": "string"}}
        ]
    },
)
async def verify_email_page(request: Request, api: ApiDep) -> HTMLResponse:
    """The page a verification link opens: says which address the link verifies and offers
    one button. Nothing changes on a GET, so link-scanning mail gateways verify nobody."""
    token = request.query_params.get("token")

    async def confirm(claim: tokens.VerificationClaim) -> HTMLResponse:
        async with api.connection() as conn:
            user = await use_cases.claimed_user(conn, claim=claim)
        return pages.confirmation_page(api.brand, token=token or "", email=user.email)

    return await _verification_page(token, api, confirm)


@pages_router.post(
    "/verify-email",
    response_class=HTMLResponse,
    tags=["users"],
    responses={
        200: {"content": _HTML, "description": "Verified"},
        400: {"content": _HTML, "description": "Missing or invalid token"},
        410: {"content": _HTML, "description": "Expired or superseded link"},
        503: {"content": _HTML, "description": "Database unavailable"},
        **problem_responses(problems.BODY_TOO_LARGE),
    },
    # Read by hand, like the page that posts it.
    openapi_extra=_FORM,
)
async def verify_email_button(request: Request, api: ApiDep) -> HTMLResponse:
    """The confirmation page's button: verifies the address, then says so."""
    token = await _form_token(request)

    async def verify(claim: tokens.VerificationClaim) -> HTMLResponse:
        async with api.connection() as conn, conn.transaction():
            row = await use_cases.verify_email(conn, claim=claim, outbox=api.outbox)
        return pages.outcome_page(api.brand, "verified", email=row.email)

    return await _verification_page(token, api, verify)


# How long after it expired a link may still ask for a new one.
RESEND_GRACE = 30 * 24 * 3600


@pages_router.post(
    "/verify-email/resend",
    status_code=202,
    response_class=HTMLResponse,
    tags=["users"],
    responses={
        202: {"content": _HTML, "description": "A new link is on its way"},
        400: {"content": _HTML, "description": "Missing or invalid token"},
        409: {"content": _HTML, "description": "The address is verified already"},
        410: {"content": _HTML, "description": "The link's address or user is gone"},
        429: {"content": _HTML, "description": "Asked too often; `Retry-After` seconds"},
        503: {"content": _HTML, "description": "Database unavailable"},
        **problem_responses(problems.BODY_TOO_LARGE),
    },
    openapi_extra=_FORM,
)
async def resend_verification_button(request: Request, api: ApiDep) -> HTMLResponse:
    """An expired link's page button: a new link to the address the old one was for, if the
    account still has it and has not verified it (the same limits as
    `POST /v1/users/{id}/verification-emails`). The old link, genuine but expired up to 30
    days, is the credential."""
    token = await _form_token(request)

    async def resend(claim: tokens.VerificationClaim) -> HTMLResponse:
        async with api.connection() as conn, conn.transaction():
            user = await use_cases.claimed_user(conn, claim=claim, lock=True)
            try:
                await use_cases.request_verification(
                    conn,
                    user_id=user.id,
                    outbox=api.outbox,
                    interval=api.settings.verification_resend_interval,
                    daily=api.settings.verification_resend_daily,
                )
            except use_cases.AlreadyVerified:
                return pages.outcome_page(api.brand, "already-verified", email=user.email)
            except use_cases.AskedTooOften as exc:
                return pages.outcome_page(api.brand, "too-soon", retry_after=exc.retry_after)
        return pages.outcome_page(api.brand, "sent", email=user.email)

    return await _verification_page(token, api, resend, grace=RESEND_GRACE)


@pages_router.get(STYLESHEET_PATH, include_in_schema=False)
async def stylesheet() -> Response:
    """The verification pages' one stylesheet."""
    return pages.stylesheet()


def _within_grace(token: str, settings: ApiSettings) -> bool:
    try:
        tokens.read_token(
            settings.email_token_secret.get_secret_value(),
            token,
            max_age=settings.email_token_max_age + RESEND_GRACE,
        )
    except (tokens.TokenExpired, tokens.TokenInvalid):
        return False
    return True


async def _form_token(request: Request) -> str | None:
    """The `token` field of a form of one field; None if there is none, or more fields."""
    try:
        fields = parse_qs((await request.body()).decode("latin-1"), max_num_fields=4)
    except ValueError:  # more fields than a form of one
        return None
    given = fields.get("token")
    return given[0] if given else None


async def _verification_page(
    token: str | None,
    api: Api,
    work: Callable[[tokens.VerificationClaim], Awaitable[HTMLResponse]],
    *,
    grace: int = 0,
) -> HTMLResponse:
    """The verification pages: `work` on the token's claim, or the page that says why not
    (400 bad token, 410 expired or superseded, 503 database away). `grace`: seconds past
    its expiry a token is still taken."""
    if not token or len(token) > MAX_TOKEN:
        return pages.outcome_page(api.brand, "invalid")
    try:
        claim = tokens.read_token(
            api.settings.email_token_secret.get_secret_value(),
            token,
            max_age=api.settings.email_token_max_age + grace,
        )
    except tokens.TokenExpired:
        # A new link may be asked for with it only while it is within RESEND_GRACE.
        if grace < RESEND_GRACE and _within_grace(token, api.settings):
            return pages.outcome_page(api.brand, "expired", token=token)
        return pages.outcome_page(api.brand, "too-old")
    except tokens.TokenInvalid:
        return pages.outcome_page(api.brand, "invalid")
    try:
        return await work(claim)
    except use_cases.LinkSuperseded:
        return pages.outcome_page(api.brand, "superseded")
    except Exception as exc:
        if is_unavailable(exc):
            return pages.outcome_page(api.brand, "unavailable")
        raise
