"""One trace from the HTTP request to the email leaving: the request's trace context is kept
in the outbox row, travels as `traceparent` on the Kafka record, and the notifier continues
it around the Postmark call."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from postroom import tokens
from postroom.tracing import RedactSecrets
from tests.support.kafka import read_topic
from tests.support.names import unique
from tests.support.postmark import Sandbox
from tests.support.settings import EMAIL_SECRET
from tests.support.stack import running_stack

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
        [record] = await read_topic(kafka_bootstrap, stack.settings.topic("user"), expect=1)

    stored = json.loads(await db.fetchval("SELECT headers::text FROM outbox ORDER BY id LIMIT 1"))
    assert stored["traceparent"].split("-")[1] == TRACE_ID
    assert record.headers["traceparent"] == stored["traceparent"]

    finished = spans.get_finished_spans()
    by_id = {span.context.span_id: span for span in finished}
    [send] = [span for span in finished if span.name == "postmark send batch"]
    assert format(send.context.trace_id, "032x") == TRACE_ID
    # The send continues the span that wrote the outbox row, inside the request's span.
    assert send.parent is not None
    assert format(send.parent.span_id, "016x") == stored["traceparent"].split("-")[2]
    writer = by_id[send.parent.span_id]
    request = by_id[writer.parent.span_id] if writer.parent else None
    assert request is not None
    assert request.name == "POST /v1/users"


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
