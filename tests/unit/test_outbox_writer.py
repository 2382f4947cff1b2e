"""The outbox writer refuses what could never be published."""

import uuid
from datetime import UTC, datetime

import pytest

from postroom import events
from postroom.outbox import MAX_EVENT_BYTES, EventTooLarge, _row, _values


def test_the_writer_refuses_an_event_kafka_would_refuse() -> None:
    """Debezium cannot park a record Kafka refuses, so the writer refuses it up front."""
    huge = events.Event(
        events.UserRegistered(
            user_id=uuid.uuid4(),
            version=1,
            email="big@example.com",
            name="x" * (MAX_EVENT_BYTES + 1),
            registered_at=datetime.now(UTC),
        )
    )
    with pytest.raises(EventTooLarge, match="at most 1000000"):
        _values(huge, shards=8)
    with pytest.raises(EventTooLarge):
        _row(huge, shards=8)
