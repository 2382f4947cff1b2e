import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from aiokafka.partitioner import DefaultPartitioner

from outbox_relay.claims import OutboxRow
from outbox_relay.publisher import cloudevent_headers, partition_for
from outbox_relay.relay import record_size, trim_to_budget
from postroom.backoff import Backoff


def row(n: int, shard: int, payload_bytes: int = 100) -> OutboxRow:
    return OutboxRow(
        id=n,
        event_id=str(uuid.uuid4()),
        aggregate_type="user",
        aggregate_id=f"user-{shard}",
        event_type="user.updated",
        payload="x" * payload_bytes,
        headers="{}",
        shard=shard,
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    )


def test_partitions_match_kafkas_default_partitioner() -> None:
    # Records keyed by a user land where any other Kafka producer would put that key.
    partitioner = DefaultPartitioner()
    for _ in range(500):
        key = str(uuid.uuid4()).encode()
        assert partition_for(key, (0, 1, 2, 3, 4, 5)) == partitioner(key, [0, 1, 2, 3, 4, 5], [])


def test_trimming_keeps_a_prefix_of_every_shard_round_robin() -> None:
    rows = [row(n, shard=n % 2) for n in range(10)]  # shards 0 and 1, five rows each
    budget = 3 * record_size(rows[0])

    kept, trimmed = trim_to_budget(rows, budget)

    assert trimmed
    assert [r.id for r in kept if r.shard == 0] == [0, 2]
    assert [r.id for r in kept if r.shard == 1] == [1]


def test_trimming_keeps_everything_that_fits() -> None:
    rows = [row(n, shard=n % 3) for n in range(9)]
    kept, trimmed = trim_to_budget(rows, 10**9)
    assert not trimmed
    assert sorted(r.id for r in kept) == list(range(9))


def test_a_single_huge_row_still_goes_out_to_be_judged() -> None:
    kept, trimmed = trim_to_budget([row(1, 0, payload_bytes=10**6), row(2, 0)], budget=1000)
    assert [r.id for r in kept] == [1]
    assert trimmed


def test_cloudevent_headers() -> None:
    r = row(1, 0)
    headers = dict(cloudevent_headers(r))
    assert headers == {
        "ce_specversion": b"1.0",
        "ce_id": r.event_id.encode(),
        "ce_source": b"/postroom",
        "ce_type": b"user.updated",
        "ce_time": b"2026-01-02T03:04:05.678000Z",
        "ce_subject": b"user-0",
        "content-type": b"application/json",
    }


def test_the_header_columns_are_sent_as_stored_and_rows_from_before_them_as_before() -> None:
    old = replace(row(1, 0), headers=json.dumps({"ce_source": "/postroom/api"}))
    new = replace(
        old,
        ce_source="/postroom/notifier",
        ce_time="2026-01-02T03:04:05.000000Z",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )

    sent_old, sent_new = dict(cloudevent_headers(old)), dict(cloudevent_headers(new))

    assert (sent_old["ce_source"], sent_old["ce_time"]) == (
        b"/postroom/api",
        b"2026-01-02T03:04:05.678000Z",
    )
    assert "traceparent" not in sent_old
    assert (sent_new["ce_source"], sent_new["ce_time"], sent_new["traceparent"]) == (
        b"/postroom/notifier",
        b"2026-01-02T03:04:05.000000Z",
        new.traceparent.encode() if new.traceparent else None,
    )


def test_the_trace_stored_with_a_row_travels_unless_the_relay_continues_it() -> None:
    stored = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    send_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"
    r = replace(row(1, 0), headers=json.dumps({"traceparent": stored}))

    assert dict(cloudevent_headers(r))["traceparent"] == stored.encode()
    assert dict(cloudevent_headers(r, send_span))["traceparent"] == send_span.encode()


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    backoff = Backoff(0.1, 2.0)
    delays = [backoff.next_delay() for _ in range(10)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(1.0 <= d <= 2.0 for d in delays[5:])
    assert len(set(delays)) > 5  # not in lock step
    backoff.reset()
    assert backoff.next_delay() <= 0.1
