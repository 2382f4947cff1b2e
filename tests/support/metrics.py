"""The series Postroom's processes export, as Prometheus stores them: each series name (a
counter's `_total`, a histogram's `_bucket`, `_sum` and `_count`) with the label names it
can carry. What the shipped alert rules and the dashboard may name."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from api.app import create_app as create_api
from notifier.app import create_app as create_notifier
from outbox_relay.app import create_app as create_relay
from tests.support.settings import (
    make_api_settings,
    make_notifier_settings,
    make_relay_settings,
)

# The series each metric type stores, and the labels the exposition format adds to them.
SERIES_OF_TYPE: dict[str, tuple[tuple[str, frozenset[str]], ...]] = {
    "counter": (("_total", frozenset()),),
    "gauge": (("", frozenset()),),
    "histogram": (
        ("_bucket", frozenset({"le"})),
        ("_sum", frozenset()),
        ("_count", frozenset()),
    ),
    "summary": (("", frozenset({"quantile"})), ("_sum", frozenset()), ("_count", frozenset())),
    "info": (("_info", frozenset()),),
}
# Labels Prometheus puts on every series it scrapes.
TARGET_LABELS = frozenset({"job", "instance"})


def registry_series(registry: CollectorRegistry) -> dict[str, frozenset[str]]:
    """Every series name `registry` can export, with its label names."""
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for suffix, added in SERIES_OF_TYPE.get(family.type, (("", frozenset()),)):
            series.setdefault(family.name + suffix, set()).update(added)
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    # A labelled metric exports no sample before its first child, so its label names are
    # read from the metric itself (prometheus_client keeps them on a private attribute).
    for collector, names in registry._collector_to_names.items():
        if isinstance(collector, MetricWrapperBase):
            for name in names:
                if name in series:
                    series[name].update(collector._labelnames)
    return {name: frozenset(labels) for name, labels in series.items()}


async def exported_series() -> dict[str, frozenset[str]]:
    """The series of the api, the relay and the notifier together, each app built as it
    starts (no lifespan runs, so nothing connects) and asked once for `/healthz`."""
    url = "postgresql://postgres@127.0.0.1:9/none"  # never connected
    exported: dict[str, frozenset[str]] = {}
    for app in (
        create_api(make_api_settings(url)),
        create_relay(make_relay_settings(url, "127.0.0.1:9")),
        create_notifier(
            make_notifier_settings(url, "127.0.0.1:9", "http://127.0.0.1:9/", "metrics"),
            consume=False,
        ),
    ):
        # One request builds the middleware, which registers the request metrics.
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert (await http.get("/healthz")).status_code == 200
        for name, labels in registry_series(app.state.registry).items():
            exported[name] = exported.get(name, frozenset()) | labels
    return exported
