"""The notifier's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.sent = Counter("postroom_notifier_sent", "Emails Postmark accepted.", registry=r)
        self.failed = Counter(
            "postroom_notifier_failed", "Notifications that ended failed.", registry=r
        )
        self.suppressed = Counter(
            "postroom_notifier_suppressed",
            "Notifications not sent: suppressed address or staging allowlist.",
            registry=r,
        )
        self.retries = Counter(
            "postroom_notifier_retries",
            "Send attempts after the first (after a transient error or a settled search).",
            registry=r,
        )
        self.reconciled = Counter(
            "postroom_notifier_reconciled",
            "Messages found already sent at Postmark after an ambiguous attempt.",
            registry=r,
        )
        self.late_acceptances = Counter(
            "postroom_notifier_late_acceptances",
            "Messages Postmark accepted for a notification already final or claimed by another "
            "notifier: recorded on the notification; a call outlived its claim.",
            registry=r,
        )
        self.searches = Counter(
            "postroom_notifier_searches",
            "Searches of Postmark's sent messages for a notification in doubt, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.batches = Counter(
            "postroom_notifier_batches", "Calls to Postmark's batch endpoint.", registry=r
        )
        self.send_latency = Histogram(
            "postroom_notifier_send_seconds",
            "Time of one Postmark batch call.",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.events = Counter("postroom_notifier_events", "Events consumed.", ["type"], registry=r)
        self.dead_letters = Counter(
            "postroom_notifier_dead_letters",
            "Records sent to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.lag = Gauge(
            "postroom_notifier_consumer_lag_records",
            "Records behind the end, per partition.",
            ["partition"],
            registry=r,
        )
        self.halted = Gauge(
            "postroom_notifier_halted",
            "1 while consumption is stopped until a fix (Postmark refused the server token).",
            registry=r,
        )
