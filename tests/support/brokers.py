"""The broker the tests run: Apache Kafka where Java 17+ and Maven are found (always under
CI=true), Tansu otherwise or when POSTROOM_TEST_BROKER=tansu (postroom_cli/embedded.py)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from postroom_cli.embedded import KafkaBroker, TansuBroker, broker_kind, local_broker


@functools.cache
def kind() -> str:
    """`kafka` or `tansu`, decided once per run. A broker named by TEST_KAFKA_BOOTSTRAP_SERVERS
    is taken for Apache Kafka unless POSTROOM_TEST_BROKER=tansu."""
    if os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS"):
        return "tansu" if os.environ.get("POSTROOM_TEST_BROKER") == "tansu" else "kafka"
    return broker_kind("POSTROOM_TEST_BROKER")


def idempotent() -> bool:
    """Production's idempotent producer, on wherever the broker grants producer ids (Tansu
    grants none)."""
    return kind() == "kafka"


def make_broker(
    *, port: int, advertised_port: int | None = None, log_path: Path | None = None
) -> KafkaBroker | TansuBroker:
    """A broker of this run's kind on 127.0.0.1:`port`, not started."""
    return local_broker(kind(), port=port, advertised_port=advertised_port, log_path=log_path)
