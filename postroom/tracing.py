"""OpenTelemetry tracing, on when OTEL_EXPORTER_OTLP_ENDPOINT is set.

One trace shows a registration from the HTTP request to the email leaving:

    POST /v1/users                  SERVER    api: FastAPI's request span
    └─ fastapi.endpoint             INTERNAL  the handler, which writes the outbox row
       └─ send <prefix>.user        PRODUCER  relay: one per record, append to Kafka's ack
          └─ process <prefix>.user  CONSUMER  notifier: one per record, until its batch is
             │                                settled (emails recorded, first attempt made)
             └─ postmark send batch CLIENT    notifier: links to the other records it carries

The request's trace context is stored in the outbox row's headers. The relay's `send` span is
its child, and the Kafka record's `traceparent` header carries the `send` span's context (the
message's creation context). The notifier's `process` span takes that context as its parent,
which the conventions allow for a span that processes one message; the emails planned from
the record continue the `process` span. A retry later (the retry loop) continues the record's
`send` span instead. The Kafka spans follow OpenTelemetry's semantic conventions for messaging,
version 1.44 (`messaging-spans.md`, `kafka.md`, still marked Development): operation types
`send` and `process` (`publish` is deprecated), names `{operation} {topic}`. A failed span
carries `error.type`, the exception's class name, never its message.

No span name or attribute holds an email address or a token: a record key becomes
`messaging.kafka.message.key` only when it is a UUID (a user id; `email` events are keyed by
the address, so theirs never is).

Without an endpoint no tracer provider is set: every call here is a no-op, the relay and the
notifier build no span at all (`enabled`), and the relay passes the stored `traceparent` on
unchanged."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import Span, SpanProcessor
from opentelemetry.trace import Link, SpanKind, StatusCode

tracer = trace.get_tracer("postroom")

# A record key that is an opaque id may be recorded on a span; any other (an email address,
# the key of `email` events) may not.
_OPAQUE_KEY = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


# Query parameters whose values are credentials (the verification link's signed token) or
# personal data (the notifier's `?email=` filter, and its page cursors, which hold the last
# row's key: an address in the suppression list).
REDACTED_QUERY_PARAMETERS = frozenset({"token", "email", "cursor"})
# A path segment holding an email address (`DELETE /v1/suppressions/{email}`), raw or encoded.
_ADDRESS_SEGMENT = re.compile(r"[^/?#]*(?:@|%40)[^/?#]*", re.IGNORECASE)
# Health probes and scrapes: called every few seconds, worth no span.
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


def is_probe(scope: Mapping[str, Any]) -> bool:
    """FastAPI's telemetry `exclude`: no span for health probes and metric scrapes."""
    return scope.get("path") in PROBES


def redacted_query(query: str) -> str:
    """A query string with the values of secret or personal parameters replaced."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(
        [(key, "REDACTED" if key in REDACTED_QUERY_PARAMETERS else value) for key, value in pairs]
    )


def redacted_path(path: str) -> str:
    """A URL path with every segment that holds an email address replaced."""
    return _ADDRESS_SEGMENT.sub("REDACTED", path)


class RedactSecrets(SpanProcessor):
    """Rewrites, as a span starts, every attribute that would carry a secret or an address
    (`url.query`, `url.path`, and the older `http.target` and `http.url`), before anything
    exports it."""

    _ATTRIBUTES = ("url.query", "url.path", "http.target", "http.url", "url.full")

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        attributes = span.attributes or {}
        for name in self._ATTRIBUTES:
            value = attributes.get(name)
            if not isinstance(value, str):
                continue
            if name == "url.query":
                redacted = redacted_query(value)
            elif name == "url.path":
                redacted = redacted_path(value)
            else:
                head, mark, query = value.partition("?")
                redacted = redacted_path(head) + (mark + redacted_query(query) if mark else "")
            if redacted != value:
                span.set_attribute(name, redacted)


def configure_tracing(service_name: str) -> bool:
    """Export spans over OTLP/HTTP when an endpoint is configured; True if tracing is on."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(RedactSecrets())  # first: before any exporter sees a span
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the span in progress, if one is being recorded."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def enabled() -> bool:
    """Whether a tracer provider is set, so spans are made at all. The relay and the notifier
    ask once per batch and skip building spans and their attributes when it is not."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def traceparent_of(span: trace.Span) -> str | None:
    """The W3C `traceparent` that makes `span` the parent of whatever continues it."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> otel_context.Context | None:
    if not traceparent:
        return None
    return propagate.extract({"traceparent": traceparent})


def links_to(traceparents: Iterable[str | None]) -> list[Link]:
    links = []
    for value in traceparents:
        ctx = context_from(value)
        if ctx is not None:
            span_context = trace.get_current_span(ctx).get_span_context()
            if span_context.is_valid:
                links.append(Link(span_context))
    return links


def start_send_span(
    *,
    topic: str,
    partition: int,
    key: str,
    message_id: str,
    parent: str | None,
    client_id: str,
    server: tuple[str, int] | None,
) -> trace.Span:
    """The PRODUCER span of one record sent to Kafka, child of `parent` (the outbox row's
    stored trace). The caller sets the offset once Kafka answers, then ends it."""
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.message.id": message_id,
        "messaging.client.id": client_id,
    }
    if _OPAQUE_KEY.fullmatch(key):
        attributes["messaging.kafka.message.key"] = key
    if server is not None:
        attributes["server.address"], attributes["server.port"] = server
    return tracer.start_span(
        f"send {topic}",
        context=context_from(parent),
        kind=SpanKind.PRODUCER,
        attributes=attributes,
    )


def start_process_span(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: str | None,
    message_id: str | None,
    parent: str | None,
    group: str,
) -> trace.Span:
    """The CONSUMER span of one record being processed, child of the record's creation
    context (`parent`, its `traceparent` header)."""
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.consumer.group.name": group,
        "messaging.kafka.offset": offset,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    if key is not None and _OPAQUE_KEY.fullmatch(key):
        attributes["messaging.kafka.message.key"] = key
    return tracer.start_span(
        f"process {topic}",
        context=context_from(parent),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )


def mark_failed(span: trace.Span, error: BaseException) -> None:
    """Mark `span` failed, naming only the error's type: a message can carry data."""
    span.set_attribute("error.type", type(error).__name__)
    span.set_status(StatusCode.ERROR, type(error).__name__)


def end_failed(span: trace.Span, error: BaseException) -> None:
    mark_failed(span, error)
    span.end()


def add_trace_ids(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: put the current trace and span ids on every log line."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = format(span_context.trace_id, "032x")
        event_dict["span_id"] = format(span_context.span_id, "016x")
    return event_dict
