"""The notifier's HTTP routes for operators (notifications, suppressions) and its readiness."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from notifier import listings
from notifier import suppressions as suppression_admin
from notifier.consumer import KAFKA_SILENCE_LIMIT, Consumer, State
from notifier.postmark import PostmarkUnauthorized, PostmarkUnavailable, RequestRejected
from postroom import cursors, problems
from postroom.addresses import address_key
from postroom.models import notifications, suppressions
from postroom.problems import ProblemError, problem_response, problem_responses
from postroom.text import NO_CONTROL_CHARACTERS
from postroom.web import (
    EngineDep,
    JsonBodyRoute,
    OutboxDep,
    PrincipalDep,
    database_ready,
    only_query,
)

Status = Literal["pending", "sent", "suppressed", "failed", "delivered", "bounced", "complained"]


class NotificationOut(BaseModel):
    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    user_id: uuid.UUID | None
    template: str
    recipient: str
    status: Status
    message_id: str | None
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime = Field(
        description="When a pending notification is tried next (after a backoff, or at the "
        "end of its settle window)."
    )
    doubt_since: datetime | None = Field(
        description="The last instant the newest attempt whose outcome is unknown (a timeout, "
        "a 5xx, a crash) could have reached Postmark: Postmark is searched before any resend, "
        "and finding nothing counts only once NOTIFIER_SEARCH_SETTLE has passed since."
    )
    late_message_ids: list[str] = Field(
        description="Messages Postmark accepted after the notification was final, or no longer "
        "claimed by the notifier that sent them (a call that outlived its claim). A row that "
        "was not sent then became `sent` with the first of them; one already sent keeps its "
        "`message_id`, and these went out as well."
    )
    late_at: datetime | None = Field(description="When the newest late acceptance came.")


NEXT_CURSOR = Field(
    description="Pass as `cursor` (with the same filters) for the next page; null on the last page."
)


class NotificationList(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None = NEXT_CURSOR


class SuppressionOut(BaseModel):
    email: str
    reason: str
    origin: str
    details: str | None
    created_at: datetime


class SuppressionList(BaseModel):
    items: list[SuppressionOut]
    next_cursor: str | None = NEXT_CURSOR


router = APIRouter(route_class=JsonBodyRoute)

# What every route here may answer: it needs the bearer token and the database.
AUTHENTICATED = (problems.UNAUTHORIZED, problems.DATABASE_UNAVAILABLE)

Cursor = Annotated[
    str | None,
    Query(
        max_length=cursors.MAX_LENGTH,
        pattern=cursors.PATTERN,
        description="The `next_cursor` of the previous page; without it, the first page.",
    ),
]


def _invalid_cursor() -> ProblemError:
    return ProblemError(
        problems.INVALID_CURSOR,
        "This cursor was not given by this list with these filters; start again without it.",
    )


@router.get(
    "/v1/notifications",
    response_model=NotificationList,
    tags=["notifications"],
    dependencies=[only_query("user_id", "email", "status", "limit", "cursor")],
    responses=problem_responses(*AUTHENTICATED, problems.VALIDATION_ERROR, problems.INVALID_CURSOR),
)
async def list_notifications(
    _: PrincipalDep,
    engine: EngineDep,
    user_id: uuid.UUID | None = None,
    email: Annotated[str | None, Query(max_length=320, pattern=NO_CONTROL_CHARACTERS)] = None,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Cursor = None,
) -> Any:
    """Notifications, newest first (by creation, then id), filtered by user, recipient and
    status; a page at a time, `next_cursor` leading to the next."""
    try:
        async with engine.connect() as conn:
            page = await listings.notifications_page(
                conn, user_id=user_id, email=email, status=status, limit=limit, cursor=cursor
            )
    except listings.InvalidCursor:
        raise _invalid_cursor() from None
    return NotificationList(
        items=[NotificationOut.model_validate(dict(row)) for row in page.rows],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/v1/notifications/{notification_id}",
    response_model=NotificationOut,
    tags=["notifications"],
    responses=problem_responses(
        *AUTHENTICATED, problems.NOTIFICATION_NOT_FOUND, problems.VALIDATION_ERROR
    ),
)
async def get_notification(notification_id: uuid.UUID, _: PrincipalDep, engine: EngineDep) -> Any:
    """One notification."""
    async with engine.connect() as conn:
        query = sa.select(notifications).where(notifications.c.id == notification_id)
        row = (await conn.execute(query)).mappings().one_or_none()
    if row is None:
        raise ProblemError(problems.NOTIFICATION_NOT_FOUND, "No notification has this id.")
    return NotificationOut.model_validate(dict(row))


@router.get(
    "/v1/suppressions",
    response_model=SuppressionList,
    tags=["suppressions"],
    dependencies=[only_query("limit", "cursor")],
    responses=problem_responses(*AUTHENTICATED, problems.VALIDATION_ERROR, problems.INVALID_CURSOR),
)
async def list_suppressions(
    _: PrincipalDep,
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Cursor = None,
) -> Any:
    """Suppressed addresses, newest first (by when, then address): nothing is sent to them.
    A page at a time, `next_cursor` leading to the next."""
    try:
        async with engine.connect() as conn:
            page = await listings.suppressions_page(conn, limit=limit, cursor=cursor)
    except listings.InvalidCursor:
        raise _invalid_cursor() from None
    return SuppressionList(
        items=[SuppressionOut.model_validate(dict(row)) for row in page.rows],
        next_cursor=page.next_cursor,
    )


class SuppressionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: EmailStr
    reason: Annotated[
        str, StringConstraints(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS)
    ] = "ManualSuppression"
    details: (
        Annotated[str, StringConstraints(max_length=2000, pattern=NO_CONTROL_CHARACTERS)] | None
    ) = None


@router.post(
    "/v1/suppressions",
    status_code=201,
    response_model=SuppressionOut,
    tags=["suppressions"],
    responses=problem_responses(
        *AUTHENTICATED,
        problems.BAD_REQUEST,
        problems.BODY_TOO_LARGE,
        problems.VALIDATION_ERROR,
        problems.ALREADY_SUPPRESSED,
    ),
)
async def add_suppression(
    body: SuppressionCreate, _: PrincipalDep, engine: EngineDep, outbox: OutboxDep
) -> Any:
    """Suppress an address by hand: nothing more is sent to it. Emits `email.suppressed`."""
    added = await suppression_admin.add(
        engine,
        outbox,
        email=body.email,
        reason=body.reason,
        details=body.details,
    )
    if not added:
        raise ProblemError(problems.ALREADY_SUPPRESSED, "This address is already suppressed.")
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    sa.select(suppressions).where(suppressions.c.email == address_key(body.email))
                )
            )
            .mappings()
            .one()
        )
    return SuppressionOut.model_validate(dict(row))


@router.delete(
    "/v1/suppressions/{email}",
    status_code=204,
    response_class=Response,
    tags=["suppressions"],
    responses=problem_responses(
        *AUTHENTICATED,
        problems.VALIDATION_ERROR,
        problems.NOT_SUPPRESSED,
        problems.SPAM_COMPLAINT,
        problems.POSTMARK_REFUSED,
        problems.POSTMARK_UNAVAILABLE,
    ),
)
async def lift_suppression(
    email: Annotated[str, Path(min_length=3, max_length=320, pattern=NO_CONTROL_CHARACTERS)],
    request: Request,
    _: PrincipalDep,
    engine: EngineDep,
    outbox: OutboxDep,
) -> Response:
    """Lift a suppression, reactivating the address at Postmark when a bounce made it
    inactive there. A spam complaint cannot be lifted (409). Postmark has POSTMARK_TIMEOUT
    to answer; when it refuses (502), or is slow or unavailable (503), nothing changes.
    Emits `email.reactivated`."""
    try:
        await suppression_admin.lift(engine, outbox, request.app.state.postmark, email=email)
    except suppression_admin.NotSuppressed:
        raise ProblemError(problems.NOT_SUPPRESSED, "This address is not suppressed.") from None
    except suppression_admin.CannotLift:
        raise ProblemError(
            problems.SPAM_COMPLAINT,
            "The recipient reported spam; this suppression cannot be lifted.",
        ) from None
    except PostmarkUnavailable as exc:
        raise ProblemError(
            problems.POSTMARK_UNAVAILABLE,
            f"Postmark did not reactivate the address in time ({exc}); the address is still "
            "suppressed. Try again later.",
        ) from None
    except (PostmarkUnauthorized, RequestRejected) as exc:
        raise ProblemError(
            problems.POSTMARK_REFUSED, f"Postmark did not reactivate the address: {exc}"
        ) from None
    return Response(status_code=204)


NOT_READY = (problems.CONSUMER_HALTED, problems.CONSUMER_NOT_READY, problems.DATABASE_UNAVAILABLE)


async def readiness(request: Request) -> Response | None:
    """Ready: the consumer is consuming and the database answers."""
    consumer: Consumer = request.app.state.consumer
    if consumer.state is State.HALTED:
        return problem_response(problems.CONSUMER_HALTED, consumer.halt_reason)
    if consumer.state is not State.CONSUMING:
        return problem_response(
            problems.CONSUMER_NOT_READY,
            "Not consuming from Kafka yet.",
            headers={"Retry-After": "1"},
        )
    if consumer.kafka_silence > KAFKA_SILENCE_LIMIT:
        return problem_response(
            problems.CONSUMER_NOT_READY,
            f"Kafka has kept this consumer waiting for {consumer.kafka_silence:.0f} s.",
            headers={"Retry-After": "1"},
        )
    return await database_ready(request)
