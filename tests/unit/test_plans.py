"""Which emails a user event plans, read the way the relay writes it to Kafka."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from notifier import plans
from notifier.plans import SourceEvent, SourceRecord, UnreadableEvent
from postroom import events

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def headers(event_id: uuid.UUID, event_type: str, **extra: str) -> dict[str, str]:
    """CloudEvents binary-mode headers as the relay writes them."""
    return {
        "ce_specversion": "1.0",
        "ce_id": str(event_id),
        "ce_source": events.SOURCE_API,
        "ce_type": event_type,
        "ce_time": "2026-01-02T03:04:05Z",
        "ce_subject": "user-1",
        "content-type": "application/json",
        **extra,
    }


def source(data: events.EventData, event_id: uuid.UUID | None = None) -> SourceEvent:
    event_id = event_id or uuid.uuid4()
    return plans.read_record(headers(event_id, data.event_type), data.model_dump_json().encode())


def registered(email: str = "ada@example.com") -> events.UserRegistered:
    return events.UserRegistered(
        user_id=uuid.uuid4(), version=1, email=email, name="Ada", registered_at=NOW
    )


def record_of(data: events.EventData, event_id: uuid.UUID) -> SourceRecord:
    return SourceRecord(
        topic="t.user-events",
        partition=2,
        offset=41,
        key=data.aggregate_id(),
        headers=tuple(headers(event_id, data.event_type, traceparent=TRACEPARENT).items()),
        value=data.model_dump_json(),
    )


# read_record


def test_read_record_gives_the_event_id_type_data_and_trace() -> None:
    event_id = uuid.uuid4()
    data = registered()

    event = plans.read_record(
        headers(event_id, "user.registered", traceparent=TRACEPARENT),
        data.model_dump_json().encode(),
    )

    assert event.event_id == event_id
    assert event.event_type == "user.registered"
    assert event.data == json.loads(data.model_dump_json())
    assert event.traceparent == TRACEPARENT


def test_read_record_without_a_trace_has_none() -> None:
    event = plans.read_record(headers(uuid.uuid4(), "user.registered"), b"{}")
    assert event.traceparent is None


@pytest.mark.parametrize(
    ("record_headers", "value"),
    [
        pytest.param({"ce_type": "user.registered"}, b"{}", id="missing-ce_id"),
        pytest.param({"ce_id": str(uuid.uuid4())}, b"{}", id="missing-ce_type"),
        pytest.param({"ce_id": "not-a-uuid", "ce_type": "user.registered"}, b"{}", id="bad-uuid"),
        pytest.param(
            {"ce_id": str(uuid.uuid4()), "ce_type": "user.registered"}, b"{not json", id="not-json"
        ),
        pytest.param({"ce_id": str(uuid.uuid4()), "ce_type": "user.registered"}, b"", id="empty"),
        pytest.param({"ce_id": str(uuid.uuid4()), "ce_type": "user.registered"}, None, id="none"),
        pytest.param(
            {"ce_id": str(uuid.uuid4()), "ce_type": "user.registered"}, b"[1, 2]", id="json-list"
        ),
        pytest.param(
            {"ce_id": str(uuid.uuid4()), "ce_type": "user.registered"}, b'"text"', id="json-string"
        ),
        pytest.param(
            {"ce_id": str(uuid.uuid4()), "ce_type": "user.registered"}, b"null", id="json-null"
        ),
    ],
)
def test_unreadable_records_are_refused(
    record_headers: dict[str, str], value: bytes | None
) -> None:
    with pytest.raises(UnreadableEvent):
        plans.read_record(record_headers, value)


# plan


def test_registration_plans_one_welcome_email_with_verification() -> None:
    data = registered("Ada@Example.com")
    event = source(data)

    [email] = plans.plan(event)

    assert email.template == "welcome"
    assert email.recipient == "Ada@Example.com"
    assert email.verification is True
    assert email.user_id == data.user_id
    assert email.event_id == event.event_id
    assert email.event_type == "user.registered"
    # The template is given the event's fields and `email`, the address it goes to.
    assert email.context == {**data.model_dump(mode="json"), "email": "Ada@Example.com"}
    assert email.id == plans.notification_id(event.event_id, "welcome", "Ada@Example.com")


def test_email_change_notifies_the_old_address_and_verifies_the_new_one() -> None:
    data = events.UserEmailChanged(
        user_id=uuid.uuid4(),
        version=3,
        old_email="old@example.com",
        new_email="new@example.com",
        name="Ada",
    )
    event = source(data)

    notice, verify = plans.plan(event)

    assert (notice.template, notice.recipient, notice.verification) == (
        "email_change_notice",
        "old@example.com",
        False,
    )
    assert notice.context == {**data.model_dump(mode="json"), "email": "old@example.com"}
    assert verify.context["email"] == "new@example.com"
    assert (verify.template, verify.recipient, verify.verification) == (
        "verify_new_email",
        "new@example.com",
        True,
    )
    assert {notice.user_id, verify.user_id} == {data.user_id}
    assert notice.id != verify.id


def test_deletion_plans_a_goodbye() -> None:
    data = events.UserDeleted(
        user_id=uuid.uuid4(), version=4, email="ada@example.com", name="Ada", deleted_at=NOW
    )

    [email] = plans.plan(source(data))

    assert (email.template, email.recipient, email.verification) == (
        "goodbye",
        "ada@example.com",
        False,
    )
    assert email.user_id == data.user_id


def test_the_trace_of_the_event_travels_with_its_emails() -> None:
    event_id = uuid.uuid4()
    data = registered()
    event = plans.read_record(
        headers(event_id, data.event_type, traceparent=TRACEPARENT),
        data.model_dump_json().encode(),
    )

    [email] = plans.plan(event)

    assert email.traceparent == TRACEPARENT


@pytest.mark.parametrize(
    "data",
    [
        events.UserUpdated(
            user_id=uuid.uuid4(), version=2, email="a@example.com", name="A", changed=["name"]
        ),
        events.UserEmailVerified(
            user_id=uuid.uuid4(), version=2, email="a@example.com", verified_at=NOW
        ),
    ],
    ids=["user.updated", "user.email_verified"],
)
def test_events_that_send_nothing_plan_no_emails(data: events.EventData) -> None:
    assert plans.plan(source(data)) == []


def test_unknown_event_types_plan_no_emails() -> None:
    event = plans.read_record(headers(uuid.uuid4(), "user.teleported"), b'{"anything": 1}')
    assert plans.plan(event) == []


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({}, id="empty"),
        pytest.param({"user_id": "not-a-uuid", "version": 1}, id="bad-field"),
        pytest.param(
            {**json.loads(registered().model_dump_json()), "surprise": True}, id="extra-field"
        ),
    ],
)
def test_data_not_matching_the_schema_is_unreadable(data: dict[str, object]) -> None:
    event = plans.read_record(headers(uuid.uuid4(), "user.registered"), json.dumps(data).encode())
    with pytest.raises(UnreadableEvent):
        plans.plan(event)


def test_the_same_event_always_plans_the_same_ids() -> None:
    event_id = uuid.uuid4()
    data = registered()

    first = plans.plan(source(data, event_id))
    again = plans.plan(source(data, event_id))

    assert [e.id for e in first] == [e.id for e in again]


# notification_id


def test_notification_ids_are_deterministic() -> None:
    event_id = uuid.uuid4()
    assert plans.notification_id(event_id, "welcome", "a@example.com") == plans.notification_id(
        event_id, "welcome", "a@example.com"
    )


def test_notification_ids_ignore_the_recipients_case() -> None:
    event_id = uuid.uuid4()
    assert plans.notification_id(event_id, "welcome", "Ada@Example.COM") == plans.notification_id(
        event_id, "welcome", "ada@example.com"
    )


def test_notification_ids_join_every_spelling_of_an_address() -> None:
    event_id = uuid.uuid4()
    one = plans.notification_id(event_id, "welcome", "straße.é@example.com")
    assert plans.notification_id(event_id, "welcome", "STRASSE.E\u0301@example.com") == one


def test_ascii_notification_ids_are_what_they_were_before_address_keys() -> None:
    # uuid5 over "event id:template:lower-cased recipient", as ids were made before 0008.
    event_id = uuid.UUID("2b0e1f4c-3d5a-4f6b-8c7d-9e0f1a2b3c4d")
    assert plans.notification_id(event_id, "welcome", "Ada@Example.COM") == uuid.uuid5(
        uuid.UUID("6f1d2f4e-8a59-4f38-9d0c-6c1b1f0a9e21"), f"{event_id}:welcome:ada@example.com"
    )


def test_notification_ids_differ_by_template_recipient_and_event() -> None:
    event_id = uuid.uuid4()
    base = plans.notification_id(event_id, "welcome", "a@example.com")
    assert plans.notification_id(event_id, "goodbye", "a@example.com") != base
    assert plans.notification_id(event_id, "welcome", "b@example.com") != base
    assert plans.notification_id(uuid.uuid4(), "welcome", "a@example.com") != base


# SourceRecord and replan


def test_source_record_round_trips_through_json() -> None:
    record = record_of(registered(), uuid.uuid4())

    stored = json.loads(json.dumps(record.as_json()))

    assert SourceRecord.from_json(stored) == record


def test_source_record_without_a_key_round_trips() -> None:
    record = SourceRecord(topic="t", partition=0, offset=0, key=None, headers=(), value='{"a": 1}')
    assert SourceRecord.from_json(json.loads(json.dumps(record.as_json()))) == record


def test_source_record_reads_back_its_event() -> None:
    event_id = uuid.uuid4()
    data = registered()

    event = record_of(data, event_id).event()

    assert event.event_id == event_id
    assert event.event_type == "user.registered"
    assert event.traceparent == TRACEPARENT


def test_replan_finds_each_email_the_record_planned() -> None:
    event_id = uuid.uuid4()
    data = events.UserEmailChanged(
        user_id=uuid.uuid4(),
        version=3,
        old_email="o@example.com",
        new_email="n@example.com",
        name="Ada",
    )
    record = record_of(data, event_id)
    planned = plans.plan(record.event())
    stored = SourceRecord.from_json(json.loads(json.dumps(record.as_json())))

    for email in planned:
        again = plans.replan(stored, email.id)
        assert again.id == email.id
        assert (again.template, again.recipient, again.verification) == (
            email.template,
            email.recipient,
            email.verification,
        )
        assert again.context == email.context
        assert again.traceparent == TRACEPARENT


def test_replan_finds_a_notification_recorded_before_address_keys_by_its_old_id() -> None:
    # Recorded (still pending) before migration 0008, under the id lower() gave: retried
    # after it, the email is planned again under that id, not turned unreadable.
    event_id = uuid.uuid4()
    record = record_of(registered("Straße@example.com"), event_id)
    old_id = uuid.uuid5(
        uuid.UUID("6f1d2f4e-8a59-4f38-9d0c-6c1b1f0a9e21"), f"{event_id}:welcome:straße@example.com"
    )
    [now] = plans.plan(record.event())
    assert now.id != old_id

    again = plans.replan(record, old_id)

    assert (again.id, again.recipient, again.template) == (old_id, now.recipient, now.template)


def test_replan_of_a_notification_the_record_does_not_plan_is_unreadable() -> None:
    record = record_of(registered(), uuid.uuid4())
    other = plans.notification_id(uuid.uuid4(), "welcome", "ada@example.com")

    with pytest.raises(UnreadableEvent):
        plans.replan(record, other)


def test_replan_of_an_unreadable_record_is_unreadable() -> None:
    record = SourceRecord(topic="t", partition=0, offset=0, key=None, headers=(), value="not json")
    with pytest.raises(UnreadableEvent):
        plans.replan(record, uuid.uuid4())


def test_templates_see_the_published_types_whoever_wrote_the_event() -> None:
    """Another service may write a version as "2", a time as a number, a uuid in braces: the
    model accepts them, and the template gets the schema's types."""
    user_id = uuid.uuid4()
    event = plans.read_record(
        headers(uuid.uuid4(), "user.registered"),
        json.dumps(
            {
                "user_id": "{" + str(user_id).upper() + "}",
                "version": "2",
                "email": "ada@example.com",
                "name": "Ada",
                "registered_at": 1_700_000_000,
            }
        ).encode(),
    )
    [email] = plans.plan(event)
    assert email.context["version"] == 2
    assert email.context["user_id"] == str(user_id)
    assert email.context["registered_at"] == "2023-11-14T22:13:20Z"
