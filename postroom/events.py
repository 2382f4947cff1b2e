"""The event envelope and the data of each event type.

An event is a fact in the past tense. The outbox stores its data as JSON; the relay turns
the row into a Kafka record with CloudEvents 1.0 binary-mode headers, so the data models
here are also the published schemas other services code against.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from postroom.addresses import address_key

SOURCE_API = "/postroom/api"


class EventData(BaseModel):
    """Base of every event's data."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]
    aggregate_type: ClassVar[str]

    def aggregate_id(self) -> str:
        raise NotImplementedError


class _UserEvent(EventData):
    aggregate_type: ClassVar[str] = "user"
    # Who an email about this event may go to: a role (the emails catalogue's `to`) and the
    # field of the data that holds that address. `user` is the user's address after the event.
    recipients: ClassVar[dict[str, str]] = {"user": "email"}
    user_id: uuid.UUID
    version: int

    def aggregate_id(self) -> str:
        return str(self.user_id)


class UserRegistered(_UserEvent):
    event_type: ClassVar[str] = "user.registered"
    email: str
    name: str
    registered_at: datetime
    # The user's BCP 47 language tag (e.g. `de-AT`), when they gave one: their emails' language.
    locale: str | None = None


class UserUpdated(_UserEvent):
    event_type: ClassVar[str] = "user.updated"
    email: str
    name: str
    changed: list[Literal["name", "email", "locale"]]
    locale: str | None = None


class UserEmailChanged(_UserEvent):
    event_type: ClassVar[str] = "user.email_changed"
    recipients: ClassVar[dict[str, str]] = {"user": "new_email", "old_address": "old_email"}
    old_email: str
    new_email: str
    name: str
    locale: str | None = None


class UserEmailVerified(_UserEvent):
    event_type: ClassVar[str] = "user.email_verified"
    email: str
    verified_at: datetime
    locale: str | None = None


class UserDeleted(_UserEvent):
    event_type: ClassVar[str] = "user.deleted"
    email: str
    name: str
    deleted_at: datetime
    locale: str | None = None


class UserVerificationRequested(_UserEvent):
    """The user asked for a new verification link for their current address."""

    event_type: ClassVar[str] = "user.verification_requested"
    email: str
    name: str
    requested_at: datetime
    locale: str | None = None


class _EmailEvent(EventData):
    """Facts about one email; keyed by the recipient's address key (postroom/addresses.py)."""

    aggregate_type: ClassVar[str] = "email"
    notification_id: uuid.UUID
    email: str
    template: str
    user_id: uuid.UUID | None
    source_event_id: uuid.UUID

    def aggregate_id(self) -> str:
        return address_key(self.email)


class EmailSent(_EmailEvent):
    event_type: ClassVar[str] = "email.sent"
    message_id: str


class EmailFailed(_EmailEvent):
    event_type: ClassVar[str] = "email.failed"
    error: str


class _AddressEvent(EventData):
    """Facts about an address, reported by Postmark's webhooks; keyed by its address key."""

    aggregate_type: ClassVar[str] = "email"
    email: str
    message_id: str | None
    notification_id: uuid.UUID | None
    user_id: uuid.UUID | None

    def aggregate_id(self) -> str:
        return address_key(self.email)


class EmailBounced(_AddressEvent):
    event_type: ClassVar[str] = "email.bounced"
    # Postmark's bounce ID exceeds 2^53: a string, so no consumer's JSON parser rounds it.
    bounce_id: str
    type: str
    inactive: bool


class EmailComplained(_AddressEvent):
    event_type: ClassVar[str] = "email.complained"
    bounce_id: str


class EmailDelivered(_AddressEvent):
    event_type: ClassVar[str] = "email.delivered"
    delivered_at: datetime


class EmailSuppressed(_AddressEvent):
    """Mail to an address is held back: for one notification (its fields set; `origin`
    None), or for the address itself, by Postmark or an operator (`origin` set)."""

    event_type: ClassVar[str] = "email.suppressed"
    reason: str
    origin: str | None = None
    template: str | None = None
    source_event_id: uuid.UUID | None = None


class EmailReactivated(_AddressEvent):
    event_type: ClassVar[str] = "email.reactivated"
    origin: str | None


SOURCE_NOTIFIER = "/postroom/notifier"

USER_EVENTS: tuple[type[EventData], ...] = (
    UserRegistered,
    UserUpdated,
    UserEmailChanged,
    UserEmailVerified,
    UserDeleted,
    UserVerificationRequested,
)
EMAIL_EVENTS: tuple[type[EventData], ...] = (
    EmailSent,
    EmailDelivered,
    EmailBounced,
    EmailComplained,
    EmailSuppressed,
    EmailReactivated,
    EmailFailed,
)
ALL_EVENTS = USER_EVENTS + EMAIL_EVENTS


@dataclass(frozen=True, slots=True)
class Event:
    """An event ready for the outbox: its id is fixed now and survives every re-send."""

    data: EventData
    source: str = SOURCE_API
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def event_type(self) -> str:
        return self.data.event_type

    @property
    def aggregate_type(self) -> str:
        return self.data.aggregate_type

    @property
    def aggregate_id(self) -> str:
        return self.data.aggregate_id()

    def payload(self) -> dict[str, Any]:
        return self.data.model_dump(mode="json")

    def headers(self) -> dict[str, str]:
        return {"ce_source": self.source}
