"""Which emails a user event asks for, by the emails catalogue. Pure functions of the event
and the catalogue: the same event always plans the same notifications, with the same
deterministic ids."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from postroom import events
from postroom.addresses import address_key
from postroom.emails.catalogue import BUILT_IN, Catalogue, EmailSpec, read_catalogue
from postroom.emails.samples import email_context
from postroom.kafka import text_headers

BUILT_IN_CATALOGUE = read_catalogue(BUILT_IN)
# Fixed namespace: notification ids are uuid5(namespace, "event id:template:address key").
_NAMESPACE = uuid.UUID("6f1d2f4e-8a59-4f38-9d0c-6c1b1f0a9e21")


class UnreadableEvent(ValueError):
    """The record is not an event this notifier can read: it goes to the dead-letter topic."""


@dataclass(frozen=True, slots=True)
class SourceEvent:
    event_id: uuid.UUID
    event_type: str
    data: dict[str, Any]
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class PlannedEmail:
    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    user_id: uuid.UUID | None
    template: str
    recipient: str
    context: dict[str, Any] = field(hash=False, compare=False)
    # Whether the email carries a verification link for (user_id, recipient).
    verification: bool = False
    # The trace of the request that caused the event, continued around the Postmark call.
    traceparent: str | None = field(default=None, hash=False, compare=False)
    # What the catalogue says of it (stream, tag, template), and the user's locale.
    spec: EmailSpec | None = field(default=None, hash=False, compare=False)
    locale: str | None = field(default=None, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """The Kafka record an email came from, kept with its notification: retries re-plan the
    email from it, and a dead letter carries it back to its topic unchanged."""

    topic: str
    partition: int
    offset: int
    key: str | None
    headers: tuple[tuple[str, str], ...]
    value: str

    @classmethod
    def of(cls, record: Any) -> SourceRecord:
        """From an aiokafka ConsumerRecord whose value is readable (JSON) text."""
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode(errors="replace") if record.key is not None else None,
            headers=text_headers(record.headers),
            value=(record.value or b"").decode(errors="replace"),
        )

    def event(self) -> SourceEvent:
        return read_record(dict(self.headers), self.value.encode())

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "headers": [list(pair) for pair in self.headers],
            "value": self.value,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceRecord:
        return cls(
            topic=str(data["topic"]),
            partition=int(data["partition"]),
            offset=int(data["offset"]),
            key=data.get("key"),
            headers=tuple((str(k), str(v)) for k, v in data["headers"]),
            value=str(data["value"]),
        )


def replan(
    source: SourceRecord, notification: uuid.UUID, catalogue: Catalogue = BUILT_IN_CATALOGUE
) -> PlannedEmail:
    """The email `notification` stands for, planned again from the record that asked for it;
    UnreadableEvent if that record no longer plans it (its email left the catalogue)."""
    for email in plan(source.event(), catalogue):
        if email.id == notification:
            return email
        if _id_before_keys(email) == notification:
            return replace(email, id=notification)
    raise UnreadableEvent(f"the record no longer plans notification {notification}")


def notification_id(event_id: uuid.UUID, template: str, recipient: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{event_id}:{template}:{address_key(recipient)}")


def _id_before_keys(email: PlannedEmail) -> uuid.UUID:
    """The id a notification got before address keys (migration 0008): the same as now for
    ASCII addresses; a row recorded then, still pending, keeps it and is still retried."""
    return uuid.uuid5(_NAMESPACE, f"{email.event_id}:{email.template}:{email.recipient.lower()}")


def read_record(headers: dict[str, str], value: bytes | None) -> SourceEvent:
    """A CloudEvent from a Kafka record, or UnreadableEvent."""
    try:
        event_id = uuid.UUID(headers["ce_id"])
        event_type = headers["ce_type"]
        data = json.loads(value or b"")
    except (KeyError, ValueError) as exc:
        raise UnreadableEvent(f"not a CloudEvent with JSON data: {exc}") from exc
    if not isinstance(data, dict):
        raise UnreadableEvent("event data is not a JSON object")
    return SourceEvent(
        event_id=event_id,
        event_type=event_type,
        data=data,
        traceparent=headers.get("traceparent"),
    )


_MODELS: dict[str, type[events.EventData]] = {
    model.event_type: model for model in events.USER_EVENTS
}


def plan(source: SourceEvent, catalogue: Catalogue = BUILT_IN_CATALOGUE) -> list[PlannedEmail]:
    """The emails `source` asks for in `catalogue`; none for event types it lists nothing for."""
    specs = catalogue.specs(source.event_type)
    model = _MODELS.get(source.event_type)
    if not specs or model is None:
        return []
    try:
        data = model.model_validate(source.data)
    except ValidationError as exc:
        raise UnreadableEvent(f"{source.event_type} data does not match its schema") from exc
    # The validated values, in the published schema's types (a producer may write a version
    # as "2" or a time as a number; a template always sees what the schema says).
    fields = data.model_dump(mode="json")
    user_id = getattr(data, "user_id", None)
    locale = getattr(data, "locale", None)
    planned = []
    for spec in specs:
        context = email_context(source.event_type, fields, spec)
        recipient = context["email"]
        planned.append(
            PlannedEmail(
                id=notification_id(source.event_id, spec.name, recipient),
                event_id=source.event_id,
                event_type=source.event_type,
                user_id=user_id,
                template=spec.name,
                recipient=recipient,
                context=context,
                verification=spec.verification_link,
                traceparent=source.traceparent,
                spec=spec,
                locale=locale,
            )
        )
    return planned
