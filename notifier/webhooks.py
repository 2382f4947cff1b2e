"""`POST /webhooks/postmark`: what Postmark tells us after a send (invariants 7 and 8).

- Basic auth, compared in constant time; JSON only; one event per request.
- Each webhook is handled in one transaction together with its outbox event. Postmark re-posts
  a webhook until it gets a 200, so the same body twice is recognised (bounces by their ID,
  everything else by a digest of the body) and answered 200 without a second record or event.
- Notification status only moves forward: sent -> delivered -> bounced / complained; a late
  Delivery never undoes a bounce.
- A bounce whose MessageID matches no notification yet (it overtook our own commit) is still
  recorded and still suppresses the address; its event carries no notification id, and the
  notification keeps the status it reaches on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier import suppressions as suppression_list
from notifier.settings import NotifierSettings
from postroom import events, problems
from postroom.addresses import address_key
from postroom.models import bounces, notifications, webhook_receipts
from postroom.outbox import OutboxWriter
from postroom.problems import ProblemError, problem_responses
from postroom.web import EngineDep, is_json

log = structlog.get_logger("postroom.webhooks")

_basic = HTTPBasic(auto_error=False, description="WEBHOOK_USERNAME and WEBHOOK_PASSWORD.")

# Statuses a webhook may move a notification from.
_DELIVERABLE = ("sent",)
_BOUNCEABLE = ("pending", "sent", "delivered")


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "postroom_notifier_webhooks",
            "Postmark webhooks, by record type and outcome.",
            ["record_type", "outcome"],
            registry=registry,
        )
        self.bounces = Counter(
            "postroom_notifier_bounces",
            "Bounces recorded, by Postmark bounce type.",
            ["type"],
            registry=registry,
        )
        self.suppressed = Counter(
            "postroom_notifier_addresses_suppressed",
            "Addresses suppressed by webhooks.",
            ["reason"],
            registry=registry,
        )


# Postmark's bodies are a few levels deep; anything much deeper is not one of them.
MAX_DEPTH = 32
_INT4 = range(-(2**31), 2**31)
RECORD_TYPES = frozenset(
    {"Bounce", "SpamComplaint", "Delivery", "SubscriptionChange", "Open", "Click"}
)
# Postmark's bounce types (its documentation's list): the metric's label values.
BOUNCE_TYPES = frozenset(
    {
        "HardBounce", "Transient", "Unsubscribe", "Subscribe", "AutoResponder", "AddressChange",
        "DnsError", "SpamNotification", "OpenRelayTest", "Unknown", "SoftBounce",
        "VirusNotification", "ChallengeVerification", "BadEmailAddress", "SpamComplaint",
        "ManuallyDeactivated", "Unconfirmed", "Blocked", "SMTPApiError", "InboundError",
        "DMARCPolicy", "TemplateRenderingFailed", "ManualSuppression",
    }
)  # fmt: skip


def label(value: str, known: frozenset[str]) -> str:
    """A metric label value: one of a known few, else `other` (labels are never raw input)."""
    return value if value in known else "other"


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _refuse_constant(name: str) -> Any:
    """json.loads takes NaN and Infinity, which JSON (and PostgreSQL's jsonb) does not."""
    raise ValueError(f"{name} is not JSON")


def _without_nul(value: Any) -> Any:
    """The body with every NUL character and lone surrogate (which PostgreSQL refuses in text
    and JSON) replaced by U+FFFD, in keys and values; the rest unchanged."""
    if isinstance(value, str):
        cleaned = value.replace("\x00", "\ufffd")
        return cleaned.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _storable_time(value: datetime | None) -> datetime | None:
    """A time PostgreSQL and Python can both hold in UTC, or None (the raw copy keeps it)."""
    if value is None:
        return None
    try:
        value.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
    return value


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    record_type: str = Field(alias="RecordType")


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    MessageID: str | None = None
    Metadata: dict[str, Any] | None = None

    def metadata(self, key: str) -> str | None:
        value = (self.Metadata or {}).get(key)
        return str(value) if value else None


class BounceRecord(_Message):
    RecordType: Literal["Bounce", "SpamComplaint"]
    ID: int = Field(ge=0, lt=2**63)
    Type: str = Field(min_length=1, max_length=100)
    TypeCode: int | None = None
    Email: str = Field(min_length=3, max_length=320)
    Inactive: bool = False
    CanActivate: bool = True
    BouncedAt: datetime | None = None
    Details: str | None = None

    @field_validator("TypeCode")
    @classmethod
    def _type_code_fits(cls, value: int | None) -> int | None:
        # Routing uses Type, not TypeCode; one beyond the column's range stays in the raw copy.
        return value if value is None or value in _INT4 else None

    @field_validator("BouncedAt")
    @classmethod
    def _bounced_at_storable(cls, value: datetime | None) -> datetime | None:
        return _storable_time(value)


class DeliveryRecord(_Message):
    RecordType: Literal["Delivery"]
    Recipient: str = Field(min_length=3, max_length=320)
    DeliveredAt: datetime

    @field_validator("DeliveredAt")
    @classmethod
    def _delivered_at_storable(cls, value: datetime) -> datetime:
        if _storable_time(value) is None:
            raise ValueError("DeliveredAt is out of range")
        return value


class SubscriptionChangeRecord(_Message):
    RecordType: Literal["SubscriptionChange"]
    Recipient: str = Field(min_length=3, max_length=320)
    ChangedAt: datetime | None = None
    SuppressSending: bool

    @field_validator("ChangedAt")
    @classmethod
    def _changed_at_storable(cls, value: datetime | None) -> datetime | None:
        return _storable_time(value)

    SuppressionReason: str | None = None
    Origin: str | None = None


class WebhookAnswer(BaseModel):
    status: Literal["recorded", "duplicate", "ignored"]


# The records the route acts on, by RecordType; everything else is acknowledged and counted.
_RECORDS: dict[str, type[_Message]] = {
    "Bounce": BounceRecord,
    "SpamComplaint": BounceRecord,
    "Delivery": DeliveryRecord,
    "SubscriptionChange": SubscriptionChangeRecord,
}
_OTHER_RECORD = "OtherRecord"


def webhook_schemas() -> dict[str, dict[str, Any]]:
    """The OpenAPI components describing the webhook bodies, by name."""
    schemas = {
        model.__name__: model.model_json_schema(ref_template="#/components/schemas/{model}")
        for model in _RECORDS.values()
    }
    schemas[_OTHER_RECORD] = {
        "title": _OTHER_RECORD,
        "description": "Open, Click, and any record type Postmark adds: acknowledged with 200 "
        "(`ignored`) and counted, so that Postmark does not retry it.",
        "type": "object",
        "properties": {"RecordType": {"type": "string", "not": {"enum": sorted(_RECORDS)}}},
        "required": ["RecordType"],
    }
    return schemas


def _request_body() -> dict[str, Any]:
    """The webhook body as the OpenAPI document describes it: one record, told apart by its
    RecordType. The route reads the bytes itself (hostile ones get a 4xx problem, never a
    5xx), so this documents what Postmark sends rather than how the route parses it."""
    mapping = {
        record_type: f"#/components/schemas/{model.__name__}"
        for record_type, model in _RECORDS.items()
    }
    mapping |= {
        record_type: f"#/components/schemas/{_OTHER_RECORD}" for record_type in ("Open", "Click")
    }
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [{"$ref": ref} for ref in dict.fromkeys(mapping.values())],
                    "discriminator": {"propertyName": "RecordType", "mapping": mapping},
                }
            }
        },
    }


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def build_router(
    settings: NotifierSettings, *, outbox: OutboxWriter, metrics: WebhookMetrics
) -> APIRouter:
    router = APIRouter(tags=["webhooks"])

    def authenticate(
        credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
    ) -> None:
        ok = credentials is not None
        user = credentials.username.encode() if credentials else b""
        password = credentials.password.encode() if credentials else b""
        # Both compared every time, in constant time, so timing tells nothing.
        ok &= hmac.compare_digest(user, settings.webhook_username.encode())
        ok &= hmac.compare_digest(password, settings.webhook_password.get_secret_value().encode())
        if not ok:
            raise ProblemError(
                problems.UNAUTHORIZED,
                "Webhook credentials are missing or wrong.",
                headers={"WWW-Authenticate": 'Basic realm="postmark-webhooks"'},
            )

    @router.post(
        "/webhooks/postmark",
        response_model=WebhookAnswer,
        dependencies=[Depends(authenticate)],
        responses=problem_responses(
            problems.INVALID_WEBHOOK,
            problems.UNAUTHORIZED,
            problems.BODY_TOO_LARGE,
            problems.UNSUPPORTED_MEDIA_TYPE,
            problems.DATABASE_UNAVAILABLE,
        ),
        openapi_extra={"requestBody": _request_body()},
    )
    async def receive_postmark_webhook(request: Request, engine: EngineDep) -> WebhookAnswer:
        """One Postmark webhook: Bounce, SpamComplaint, Delivery or SubscriptionChange;
        Open, Click and unknown record types are acknowledged and counted. The body is read
        leniently, as Postmark sends it: stored as far as it can be, or refused with a 4xx
        problem, never a 5xx."""
        if not is_json(request.headers.get("content-type")):
            raise ProblemError(problems.UNSUPPORTED_MEDIA_TYPE, "Send the webhook as JSON.")
        raw = await request.body()
        try:
            body = json.loads(raw, parse_constant=_refuse_constant)
            if _depth(body) > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
            body = _without_nul(body)
            record = _Record.model_validate(body)
        except (ValueError, RecursionError, ValidationError) as exc:
            log.warning("webhook refused", reason=_why(exc), size=len(raw))
            raise ProblemError(
                problems.INVALID_WEBHOOK, "The body is not a Postmark webhook."
            ) from None
        record_type = label(record.record_type, RECORD_TYPES)
        digest = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        try:
            async with engine.begin() as conn:
                outcome = await _handle(conn, record.record_type, body, digest, outbox, metrics)
        except ValidationError as exc:
            metrics.received.labels(record_type, "invalid").inc()
            log.warning(
                "webhook refused",
                record_type=record_type,
                reason=_why(exc),
                size=len(raw),
            )
            raise ProblemError(
                problems.INVALID_WEBHOOK,
                f"The {record_type} body lacks what that record type needs.",
            ) from None
        metrics.received.labels(record_type, outcome).inc()
        return WebhookAnswer(status=outcome)

    return router


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
    return type(exc).__name__


async def _handle(
    conn: AsyncConnection,
    record_type: str,
    body: dict[str, Any],
    digest: str,
    outbox: OutboxWriter,
    metrics: WebhookMetrics,
) -> str:
    if record_type in ("Bounce", "SpamComplaint"):
        return await _bounce(conn, BounceRecord.model_validate(body), body, outbox, metrics)
    if record_type == "Delivery":
        record: Any = DeliveryRecord.model_validate(body)
    elif record_type == "SubscriptionChange":
        record = SubscriptionChangeRecord.model_validate(body)
    else:
        return "ignored"  # Open, Click, anything new: acknowledged so Postmark stops retrying
    first = await conn.execute(
        pg_insert(webhook_receipts)
        .values(digest=digest, record_type=record_type)
        .on_conflict_do_nothing(index_elements=["digest"])
        .returning(webhook_receipts.c.digest)
    )
    if first.first() is None:
        return "duplicate"
    if isinstance(record, DeliveryRecord):
        await _delivery(conn, record, outbox)
        return "recorded"
    return await _subscription_change(conn, record, outbox, metrics)


async def _move(
    conn: AsyncConnection, message_id: str | None, status: str, allowed_from: tuple[str, ...]
) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """Move the notification sent as `message_id` to `status` if it may go there; return its
    (id, user id), or Nones when no notification has that MessageID."""
    if not message_id:
        return None, None
    row = (
        await conn.execute(
            sa.select(notifications.c.id, notifications.c.user_id, notifications.c.status)
            .where(notifications.c.message_id == message_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        return None, None
    if row.status in allowed_from:
        await conn.execute(
            sa.update(notifications)
            .where(notifications.c.id == row.id)
            .values(status=status, updated_at=sa.func.now())
        )
    return row.id, row.user_id


# The user was deleted and the email is not their goodbye (which still names its address).
_ERASED_MAIL = sa.text(
    """
    SELECT EXISTS (SELECT 1 FROM erased_users WHERE user_id = :user)
       AND NOT EXISTS (SELECT 1 FROM notifications
                       WHERE id = :notification AND event_type = 'user.deleted')
    """
)


async def _erased(
    conn: AsyncConnection, notification_id: uuid.UUID | None, user_id: uuid.UUID | None
) -> bool:
    """Whether a webhook is about an email of a deleted user that is not their goodbye."""
    if user_id is None:
        return False
    result = await conn.execute(_ERASED_MAIL, {"user": user_id, "notification": notification_id})
    return bool(result.scalar_one())


async def _bounce(
    conn: AsyncConnection,
    record: BounceRecord,
    body: dict[str, Any],
    outbox: OutboxWriter,
    metrics: WebhookMetrics,
) -> str:
    complaint = record.RecordType == "SpamComplaint"
    status = "complained" if complaint else "bounced"
    matched, user_id = await _move(conn, record.MessageID, status, _BOUNCEABLE)
    # Unmatched (it overtook our commit): the message's Metadata names them, for the event.
    user_id = user_id or _uuid(record.metadata("user_id"))
    notification_id = matched or _uuid(record.metadata("notification_id"))
    # A bounce of a deleted user's email (not their goodbye) arriving after the deletion is
    # stored as the deletion left their others: without the address (invariant 12).
    erased = await _erased(conn, notification_id, user_id)
    inserted = await conn.execute(
        pg_insert(bounces)
        .values(
            id=record.ID,
            record_type=record.RecordType,
            type=record.Type,
            type_code=record.TypeCode,
            email="" if erased else record.Email,
            email_key="" if erased else address_key(record.Email),
            message_id=record.MessageID,
            notification_id=matched,
            inactive=record.Inactive,
            can_activate=record.CanActivate and not complaint,
            bounced_at=record.BouncedAt,
            details=None if erased else record.Details,
            raw={} if erased else body,
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(bounces.c.id)
    )
    if inserted.first() is None:
        return "duplicate"  # the notification had already moved on the first delivery
    metrics.bounces.labels(label(record.Type, BOUNCE_TYPES)).inc()
    if record.Inactive or complaint:
        reason = suppression_list.SPAM_COMPLAINT if complaint else record.Type
        if await suppression_list.suppress(
            conn,
            record.Email,
            reason=reason,
            origin="Postmark",
            details=record.Details,
            at=record.BouncedAt,
        ):
            metrics.suppressed.labels(label(reason, BOUNCE_TYPES)).inc()
    common = {
        "email": "" if erased else record.Email,
        "message_id": record.MessageID,
        "notification_id": notification_id,
        "user_id": user_id,
        "bounce_id": str(record.ID),
    }
    data: events.EventData = (
        events.EmailComplained(**common)
        if complaint
        else events.EmailBounced(**common, type=record.Type, inactive=record.Inactive)
    )
    await outbox.add(conn, events.Event(data, source=events.SOURCE_NOTIFIER))
    return "recorded"


async def _delivery(conn: AsyncConnection, record: DeliveryRecord, outbox: OutboxWriter) -> None:
    notification_id, user_id = await _move(conn, record.MessageID, "delivered", _DELIVERABLE)
    notification_id = notification_id or _uuid(record.metadata("notification_id"))
    user_id = user_id or _uuid(record.metadata("user_id"))
    erased = await _erased(conn, notification_id, user_id)
    await outbox.add(
        conn,
        events.Event(
            events.EmailDelivered(
                email="" if erased else record.Recipient,
                message_id=record.MessageID,
                notification_id=notification_id,
                user_id=user_id,
                delivered_at=record.DeliveredAt,
            ),
            source=events.SOURCE_NOTIFIER,
        ),
    )


async def _subscription_change(
    conn: AsyncConnection,
    record: SubscriptionChangeRecord,
    outbox: OutboxWriter,
    metrics: WebhookMetrics,
) -> str:
    """Suppress or lift, unless a newer change is in force; "ignored" when nothing changed."""
    common = {
        "email": record.Recipient,
        "message_id": record.MessageID,
        "notification_id": _uuid(record.metadata("notification_id")),
        "user_id": _uuid(record.metadata("user_id")),
        "origin": record.Origin,
    }
    data: events.EventData
    if record.SuppressSending:
        reason = record.SuppressionReason or "ManualSuppression"
        if not await suppression_list.suppress(
            conn,
            record.Recipient,
            reason=reason,
            origin=record.Origin or "Postmark",
            details=None,
            at=record.ChangedAt,
        ):
            return "ignored"  # already suppressed as strongly, or lifted since
        metrics.suppressed.labels(label(reason, BOUNCE_TYPES)).inc()
        data = events.EmailSuppressed(**common, reason=reason)
    else:
        if not await suppression_list.unsuppress(conn, record.Recipient, at=record.ChangedAt):
            return "ignored"  # not suppressed, a spam complaint, or suppressed since
        data = events.EmailReactivated(**common)
    await outbox.add(conn, events.Event(data, source=events.SOURCE_NOTIFIER))
    return "recorded"
