"""The Prometheus registry every process starts from: besides its own series, what an operator
expects of any process (`process_resident_memory_bytes`, CPU seconds, open file descriptors,
`python_info`, `python_gc_*`)."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    disable_created_metrics,
)

# Counters and histograms export only their values: no `_created` twin of every series.
disable_created_metrics()  # type: ignore[no-untyped-call]


def process_registry() -> CollectorRegistry:
    """A new registry holding the process, platform and garbage-collector collectors."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry
