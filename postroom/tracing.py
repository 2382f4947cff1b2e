"""OpenTelemetry tracing, on when OTEL_EXPORTER_OTLP_ENDPOINT is set.

FastAPI traces each request itself once a tracer provider is set. The request's trace context
is stored in the outbox row's headers, travels as `traceparent` on
the Kafka record, and the notifier continues it around the Postmark call, so one trace shows
a registration from the HTTP request to the email leaving. Without an endpoint every call
here is a no-op and no header is written."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import Span, SpanProcessor
from opentelemetry.trace import Link

tracer = trace.get_tracer("postroom")


# Query parameters whose values are credentials (the verification link's signed token).
SECRET_QUERY_PARAMETERS = frozenset({"token"})
# Health probes and scrapes: called every few seconds, worth no span.
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


def is_probe(scope: Mapping[str, Any]) -> bool:
    """FastAPI's telemetry `exclude`: no span for health probes and metric scrapes."""
    return scope.get("path") in PROBES


def redacted_query(query: str) -> str:
    """A query string with the values of secret parameters replaced."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(
        [(key, "REDACTED" if key in SECRET_QUERY_PARAMETERS else value) for key, value in pairs]
    )


class RedactSecrets(SpanProcessor):
    """Rewrites, as a span starts, every attribute that would carry a secret query value
    (`url.query`, and the older `http.target` and `http.url`), before anything exports it."""

    _ATTRIBUTES = ("url.query", "http.target", "http.url", "url.full")

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        attributes = span.attributes or {}
        for name in self._ATTRIBUTES:
            value = attributes.get(name)
            if not isinstance(value, str):
                continue
            if name == "url.query":
                span.set_attribute(name, redacted_query(value))
            elif "?" in value:
                head, _, query = value.partition("?")
                span.set_attribute(name, f"{head}?{redacted_query(query)}")


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


def add_trace_ids(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: put the current trace and span ids on every log line."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = format(span_context.trace_id, "032x")
        event_dict["span_id"] = format(span_context.span_id, "016x")
    return event_dict
