"""OpenTelemetry tracing, on when OTEL_EXPORTER_OTLP_ENDPOINT is set.

FastAPI traces each request itself once a tracer provider is set. The request's trace context
is stored in the outbox row's headers, travels as `traceparent` on
the Kafka record, and the notifier continues it around the Postmark call, so one trace shows
a registration from the HTTP request to the email leaving. Without an endpoint every call
here is a no-op and no header is written."""

from __future__ import annotations

import os
from collections.abc import Iterable, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link

tracer = trace.get_tracer("postroom")


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
