"""One trace from the HTTP request to the email leaving: the request's trace context is kept
in the outbox row, the relay's `send` span continues it and travels as the Kafka record's
`traceparent`, and the notifier's `process` span continues that around the Postmark call."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from unittest.mock import ANY
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.ext.asyncio import create_async_engine

from outbox_relay import claims
from outbox_relay.publisher import Deferred, Publisher
from postroom import cursors, events, tokens
from postroom.outbox import add_event
from postroom.settings import asyncpg_url
from postroom.tracing import RedactSecrets
from tests.support.kafka import read_topic, registered_record
from tests.support.names import unique
from tests.support.postmark import Sandbox
from tests.support.relay import wait_published
from tests.support.settings import EMAIL_SECRET, make_notifier_settings, make_relay_settings
from tests.support.stack import operator_api, running_stack

pytestmark = pytest.mark.kafka

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RedactSecrets())  # as configure_tracing installs it
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process: later tests just record too
    yield exporter
    exporter.clear()


async def test_a_registration_is_one_trace_from_request_to_postmark(
    spans: InMemorySpanExporter,
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
) -> None:
    email = f"{unique('traced')}@example.com"
    async with running_stack(database_url, kafka_bootstrap, sandbox) as stack:
        created = await stack.api.post(
            "/v1/users", json={"email": email, "name": "T"}, headers={"traceparent": CALLER}
        )
        assert created.status_code == 201
        await stack.wait_status(email, "sent")
        topic = stack.settings.topic("user")
        [record] = await read_topic(kafka_bootstrap, topic, expect=1)
        await wait_published(db, 2)  # user.registered, and email.sent keyed by the address

    user_id = created.json()["id"]
    stored = json.loads(await db.fetchval("SELECT headers::text FROM outbox ORDER BY id LIMIT 1"))
    assert stored["traceparent"].split("-")[1] == TRACE_ID
    finished = spans.get_finished_spans()
    traced = [span for span in finished if format(span.context.trace_id, "032x") == TRACE_ID]
    by_id = {span.context.span_id: span for span in traced}

    def parent(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, span.name
        return by_id[span.parent.span_id]

    # The relay's span is the child of the trace stored with the row (inside the request's
    # span), and the record carries the relay's span as its creation context.
    [send] = [span for span in traced if span.kind is SpanKind.PRODUCER]
    assert send.name == f"send {topic}"
    assert f"{parent(send).context.span_id:016x}" == stored["traceparent"].split("-")[2]
    assert parent(parent(send)).name == "POST /v1/users"
    assert record.headers["traceparent"] == f"00-{TRACE_ID}-{send.context.span_id:016x}-01"
    attributes = dict(send.attributes or {})
    assert attributes == {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "messaging.kafka.message.key": user_id,
        "messaging.message.id": record.ce_id,
        "messaging.client.id": ANY,
        "server.address": ANY,
        "server.port": ANY,
    }
    assert f"{attributes['server.address']}:{attributes['server.port']}" in kafka_bootstrap

    # The notifier processes the record as the child of the relay's span, and sends its
    # email inside that processing.
    [process] = [span for span in traced if span.kind is SpanKind.CONSUMER]
    assert process.name == f"process {topic}"
    assert parent(process) is send
    assert dict(process.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.consumer.group.name": stack.settings.notifier_group_id,
        "messaging.kafka.offset": record.offset,
        "messaging.kafka.message.key": user_id,
        "messaging.message.id": record.ce_id,
    }
    [postmark] = [span for span in traced if span.name == "postmark send batch"]
    assert parent(postmark) is process
    assert all(span.status.is_ok for span in (send, process, postmark))

    # No span of the path names the address: the registration's trace, and every Kafka span
    # (the `email.sent` record, keyed by the address, has one of its own).
    kafka = [span for span in finished if span.kind in (SpanKind.PRODUCER, SpanKind.CONSUMER)]
    assert any(span.name == f"send {stack.settings.topic('email')}" for span in kafka)
    everything = repr(
        [
            (span.name, dict(span.attributes or {}), span.events, span.links)
            for span in traced + kafka
        ]
    ).lower()
    assert email.lower() not in everything
    assert quote(email.lower()) not in everything


async def test_no_span_holds_a_verification_token_and_probes_make_none(
    spans: InMemorySpanExporter, client: httpx.AsyncClient
) -> None:
    email = f"{unique('token')}@example.com"
    created = await client.post("/v1/users", json={"email": email, "name": "T"})
    token = tokens.issue_token(EMAIL_SECRET, user_id=uuid.UUID(created.json()["id"]), email=email)
    spans.clear()

    page = await client.get("/verify-email", params={"token": token, "lang": "en"})
    probes = [(await client.get(path)).status_code for path in ("/healthz", "/readyz", "/metrics")]
    finished = spans.get_finished_spans()

    assert page.status_code == 200
    assert probes == [200, 200, 200]
    assert [span.name for span in finished if span.kind.name == "SERVER"] == ["GET /verify-email"]
    [server] = [span for span in finished if span.kind.name == "SERVER"]
    assert (server.attributes or {}).get("url.query") == "token=REDACTED&lang=en"
    everything = repr([(span.name, dict(span.attributes or {}), span.events) for span in finished])
    assert token not in everything
    assert token.split(".")[0] not in everything  # not even the signed payload


async def test_records_settled_together_keep_their_own_traces(
    spans: InMemorySpanExporter,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
) -> None:
    # Records from another producer, on the topic before the notifier joins its group, so
    # they most likely reach it in one batch and one Postmark call.
    parents = {f"{uuid.uuid4().hex}": f"{n + 1:016x}" for n in range(4)}
    traceparents = [f"00-{trace_id}-{span_id}-01" for trace_id, span_id in parents.items()]
    emails = [f"{unique('batched')}@example.com" for _ in range(3)]
    async with running_stack(database_url, kafka_bootstrap, sandbox) as stack:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for email, traceparent in zip(emails, traceparents[:3], strict=True):
                key, value, headers = registered_record(email)
                headers.append(("traceparent", traceparent.encode()))
                await producer.send(stack.settings.topic("user"), value, key=key, headers=headers)
            await producer.send_and_wait(
                stack.settings.topic("user"),
                b"{not json",
                key=b"k",
                headers=[("ce_id", b"x"), ("traceparent", traceparents[3].encode())],
            )
        finally:
            await producer.stop()
        for email in emails:
            await stack.wait_status(email, "sent")

    finished = spans.get_finished_spans()
    process = {
        format(span.context.trace_id, "032x"): span
        for span in finished
        if span.kind is SpanKind.CONSUMER and format(span.context.trace_id, "032x") in parents
    }
    assert process.keys() == parents.keys()
    for trace_id, span in process.items():
        assert span.parent is not None
        assert span.parent.is_remote
        assert f"{span.parent.span_id:016x}" == parents[trace_id]
    *readable, unreadable = (process[trace_id] for trace_id in parents)
    assert not unreadable.status.is_ok
    assert (unreadable.attributes or {})["error.type"] == "UnreadableEvent"

    # Each record's processing is the parent of the Postmark call that sent its email, or
    # linked from it when another record of the batch is.
    ids = {span.context.span_id for span in readable}
    calls = [
        span
        for span in finished
        if span.name == "postmark send batch" and span.parent and span.parent.span_id in ids
    ]
    reached = [span.parent.span_id for span in calls if span.parent] + [
        link.context.span_id for span in calls for link in span.links
    ]
    assert sorted(reached) == sorted(ids)
    assert all(span.status.is_ok for span in readable + calls)


async def test_no_span_holds_an_address_the_operator_api_was_given(
    spans: InMemorySpanExporter, database_url: str
) -> None:
    settings = make_notifier_settings(database_url, "127.0.0.1:9", "http://127.0.0.1:9/", "pii")
    email = f"{unique('Private.Person')}@example.com"
    spans.clear()
    async with operator_api(settings) as notifier:
        listed = await notifier.get("/v1/notifications", params={"email": email, "limit": 5})
        lifted = await notifier.delete(f"/v1/suppressions/{quote(email)}")
        also = await notifier.delete(f"/v1/suppressions/{email}")
        # A page cursor of the suppression list holds an address (base64, not hidden).
        cursor = cursors.encode("suppressions", {}, created_at=datetime.now(UTC), key=email)
        paged = await notifier.get("/v1/suppressions", params={"cursor": cursor})
    assert (listed.status_code, lifted.status_code, also.status_code) == (200, 404, 404)
    assert paged.status_code == 200
    servers = [span for span in spans.get_finished_spans() if span.kind.name == "SERVER"]
    assert len(servers) == 4
    assert (servers[3].attributes or {}).get("url.query") == "cursor=REDACTED"
    attributes = [dict(span.attributes or {}) for span in servers]
    assert attributes[0].get("url.query") == "email=REDACTED&limit=5"
    assert all(
        a.get("url.path") in ("/v1/notifications", "/v1/suppressions/REDACTED", "/v1/suppressions")
        for a in attributes
    )
    everything = repr(
        [
            (span.name, dict(span.attributes or {}), span.events)
            for span in spans.get_finished_spans()
        ]
    ).lower()
    local_part = email.split("@")[0].lower()
    assert local_part not in everything


async def test_a_full_producer_batch_defers_rows_without_failing_their_spans(
    spans: InMemorySpanExporter, db: asyncpg.Connection, database_url: str, kafka_bootstrap: str
) -> None:
    # The relay trims a cycle to half a producer batch, so a batch fills only when headers
    # outgrow that margin: here the publisher is handed more than a batch holds directly.
    # Producer batches of 32 KiB (the smallest RELAY_BATCH_BYTES allows); one user's 12
    # updates of 4 KiB, all in one partition.
    settings = make_relay_settings(
        database_url, kafka_bootstrap, relay_shards=1, relay_batch_bytes=16 * 1024
    )
    user_id = uuid.uuid4()
    engine = create_async_engine(asyncpg_url(database_url))
    try:
        async with engine.begin() as conn:
            for version in range(1, 13):
                update = events.UserUpdated(
                    user_id=user_id,
                    version=version,
                    email="a@example.com",
                    name=f"{version:04d}" + "x" * 4096,
                    changed=["name"],
                )
                await add_event(conn, events.Event(update), shards=1)
    finally:
        await engine.dispose()
    rows = await claims.claim(db, shards=[0], per_shard=100)
    publisher = Publisher(settings, client_id=unique("deferring"))
    await publisher.start()
    try:
        spans.clear()
        results = await publisher.publish(rows)
    finally:
        await publisher.stop()

    sent = [result is None for result in results]
    assert sent[0]
    assert not sent[-1], "the batch did not fill"
    assert sent == sorted(sent, reverse=True), "a row overtook one held back before it"
    assert all(isinstance(result, Deferred) for result in results[sent.count(True) :])
    sends = [span for span in spans.get_finished_spans() if span.kind is SpanKind.PRODUCER]
    # The row that found the batch full ends its span marked deferred, not failed; the rows
    # behind it in its shard make no span until they are sent.
    [deferred] = [span for span in sends if (span.attributes or {}).get("postroom.relay.deferred")]
    assert deferred.status.status_code is StatusCode.UNSET
    assert not [span for span in sends if span.status.status_code is StatusCode.ERROR]
    assert len(sends) == sent.count(True) + 1
