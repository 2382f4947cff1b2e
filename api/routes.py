"""The `/v1` routes and the verification pages."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from api import idempotency, pages
from api import users as use_cases
from api.schemas import EmailVerificationRequest, UserCreate, UserOut, UserPatch
from api.settings import ApiSettings
from postroom import tokens
from postroom.db import is_unavailable
from postroom.problems import ProblemError, handle_problem, problem_responses
from postroom.web import EngineDep, OutboxDep, PrincipalDep, get_settings

SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Replays the first answer for a repeat of the same request.",
        min_length=1,
        max_length=idempotency.MAX_KEY_LENGTH,
        pattern=idempotency.KEY_PATTERN,
    ),
]

# The use cases' refusals, as the problems this API answers them with.
REFUSALS: dict[type[use_cases.Refused], ProblemError] = {
    use_cases.UserNotFound: ProblemError(
        404, "user-not-found", "No user has this id.", title="User not found"
    ),
    use_cases.EmailTaken: ProblemError(
        409,
        "email-taken",
        "Another user already has this email address.",
        title="Email address taken",
    ),
    use_cases.LinkSuperseded: ProblemError(
        410,
        "token-superseded",
        "This link is for an address the account no longer has, or a deleted account.",
        title="Verification link no longer valid",
    ),
}


async def handle_refusal(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, use_cases.Refused)
    return await handle_problem(request, REFUSALS[type(exc)])


users_router = APIRouter(prefix="/v1", tags=["users"])
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
        201: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **problem_responses(400, 401, 409, 413, 422, 503),
    },
)
async def create_user(
    body: UserCreate,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    engine: EngineDep,
    settings: SettingsDep,
    outbox: OutboxDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Register a user; emits `user.registered`."""
    guard = idempotency.Guard.of(
        method="POST",
        path=request.url.path,
        body=body.model_dump(mode="json"),
        principal=principal,
        key=idempotency_key,
        ttl=settings.idempotency_key_ttl,
    )
    async with engine.begin() as conn:
        if (stored := await guard.claim_or_replay(conn)) is not None:
            return _replay(stored)
        row = await use_cases.register_user(conn, email=body.email, name=body.name, outbox=outbox)
        user = UserOut.from_row(row)
        location = f"/v1/users/{row.id}"
        await guard.remember(
            conn,
            idempotency.StoredAnswer(201, user.model_dump(mode="json"), {"Location": location}),
        )
    response.headers["Location"] = location
    return user


@users_router.get(
    "/users/{user_id}", response_model=UserOut, responses=problem_responses(401, 404, 422, 503)
)
async def read_user(user_id: uuid.UUID, _: PrincipalDep, engine: EngineDep) -> Any:
    """Read one user."""
    async with engine.connect() as conn:
        return UserOut.from_row(await use_cases.get_user(conn, user_id=user_id))


@users_router.patch(
    "/users/{user_id}",
    response_model=UserOut,
    responses=problem_responses(400, 401, 404, 409, 413, 422, 503),
)
async def patch_user(
    user_id: uuid.UUID,
    body: UserPatch,
    _: PrincipalDep,
    engine: EngineDep,
    outbox: OutboxDep,
) -> Any:
    """Change name and/or email; emits `user.updated`, and `user.email_changed` when the
    address changes (its verification is reset)."""
    async with engine.begin() as conn:
        row = await use_cases.update_user(
            conn, user_id=user_id, name=body.name, email=body.email, outbox=outbox
        )
    return UserOut.from_row(row)


@users_router.delete(
    "/users/{user_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 404, 422, 503),
)
async def remove_user(
    user_id: uuid.UUID, _: PrincipalDep, engine: EngineDep, outbox: OutboxDep
) -> Response:
    """Delete a user; emits `user.deleted`."""
    async with engine.begin() as conn:
        await use_cases.delete_user(conn, user_id=user_id, outbox=outbox)
    return Response(status_code=204)


def _claim_from(token: str, settings: SettingsDep) -> tokens.VerificationClaim:
    try:
        return tokens.read_token(
            settings.email_token_secret.get_secret_value(),
            token,
            max_age=settings.email_token_max_age,
        )
    except tokens.TokenExpired:
        raise ProblemError(
            410,
            "token-expired",
            "This verification link has expired; ask for a new one.",
            title="Verification link expired",
        ) from None
    except tokens.TokenInvalid:
        raise ProblemError(
            400,
            "token-invalid",
            "This verification token is not valid.",
            title="Invalid verification token",
        ) from None


@users_router.post(
    "/email-verifications",
    response_model=UserOut,
    responses=problem_responses(400, 410, 413, 422, 503),
    openapi_extra={"security": []},
)
async def verify_email(
    body: EmailVerificationRequest,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    outbox: OutboxDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Mark an address verified with the signed token from the email; emits
    `user.email_verified`. The token is the credential: no bearer token needed."""
    claim = _claim_from(body.token, settings)
    guard = idempotency.Guard.of(
        method="POST",
        path=request.url.path,
        body=body.model_dump(mode="json"),
        principal=f"user:{claim.user_id}",
        key=idempotency_key,
        ttl=settings.idempotency_key_ttl,
    )
    async with engine.begin() as conn:
        if (stored := await guard.claim_or_replay(conn)) is not None:
            return _replay(stored)
        row = await use_cases.verify_email(conn, claim=claim, outbox=outbox)
        user = UserOut.from_row(row)
        await guard.remember(conn, idempotency.StoredAnswer(200, user.model_dump(mode="json"), {}))
    return user


_HTML = {"text/html": {"schema": {"type": "string"}}}
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
async def verify_email_page(
    request: Request, engine: EngineDep, settings: SettingsDep
) -> HTMLResponse:
    """The page a verification link opens: says which address the link verifies and offers
    one button. Nothing changes on a GET, so link-scanning mail gateways verify nobody."""
    token = request.query_params.get("token")

    async def confirm(claim: tokens.VerificationClaim) -> HTMLResponse:
        async with engine.connect() as conn:
            user = await use_cases.claimed_user(conn, claim=claim)
        return pages.confirmation_page(token=token or "", email=user.email)

    return await _verification_page(token, settings, confirm)


@pages_router.post(
    "/verify-email",
    response_class=HTMLResponse,
    tags=["users"],
    responses={
        200: {"content": _HTML, "description": "Verified"},
        400: {"content": _HTML, "description": "Missing or invalid token"},
        410: {"content": _HTML, "description": "Expired or superseded link"},
        503: {"content": _HTML, "description": "Database unavailable"},
        **problem_responses(413),
    },
    # Read by hand, like the page that posts it.
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "properties": {"token": {"type": "string"}}}
                }
            },
        }
    },
)
async def verify_email_button(
    request: Request, engine: EngineDep, settings: SettingsDep, outbox: OutboxDep
) -> HTMLResponse:
    """The confirmation page's button: verifies the address, then says so."""
    try:
        fields = parse_qs((await request.body()).decode("latin-1"), max_num_fields=4)
    except ValueError:  # more fields than a form of one
        return pages.verification_page(400)
    given = fields.get("token")

    async def verify(claim: tokens.VerificationClaim) -> HTMLResponse:
        async with engine.begin() as conn:
            row = await use_cases.verify_email(conn, claim=claim, outbox=outbox)
        return pages.verification_page(200, email=row.email)

    return await _verification_page(given[0] if given else None, settings, verify)


async def _verification_page(
    token: str | None,
    settings: SettingsDep,
    work: Callable[[tokens.VerificationClaim], Awaitable[HTMLResponse]],
) -> HTMLResponse:
    """Both verification pages: `work` on the token's claim, or the page that says why not
    (400 bad token, 410 expired or superseded, 503 database away)."""
    if not token or len(token) > MAX_TOKEN:
        return pages.verification_page(400)
    try:
        return await work(_claim_from(token, settings))
    except ProblemError as problem:
        return pages.verification_page(problem.status)
    except use_cases.Refused as refusal:
        return pages.verification_page(REFUSALS[type(refusal)].status)
    except Exception as exc:
        if is_unavailable(exc):
            return pages.verification_page(503)
        raise
