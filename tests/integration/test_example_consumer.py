"""The example consumer other teams start from: it sees each event once, in order per user."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.support.names import unique

pytestmark = pytest.mark.kafka

_PATH = Path(__file__).resolve().parents[2] / "examples" / "consumer.py"
_spec = importlib.util.spec_from_file_location("example_consumer", _PATH)
assert _spec is not None
assert _spec.loader is not None
example = importlib.util.module_from_spec(_spec)
sys.modules["example_consumer"] = example
_spec.loader.exec_module(example)


async def test_the_example_consumer_drops_repeats_skips_poison_and_keeps_order(
    kafka_bootstrap: str,
) -> None:
    topic = unique("example")
    user = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in range(3)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        # versions 1, 2, then 2 again (a relay's repeat), then 3; version 2 with a null
        # traceparent (as Kafka Connect writes a null column), and a poison record before 3
        for version, event_id in [(1, ids[0]), (2, ids[1]), (2, ids[1]), (0, ""), (3, ids[2])]:
            headers: list[tuple[str, bytes | None]] = [
                ("ce_id", event_id.encode()),
                ("ce_type", b"user.updated"),
                ("ce_subject", user.encode()),
            ]
            if version == 2:
                headers.append(("traceparent", None))
            await producer.send_and_wait(
                topic,
                value=f'{{"user_id": "{user}", "version": {version}}}'.encode()
                if version
                else b"\xff not json",
                key=user.encode(),
                headers=headers if version else [("ce_type", b"user.updated")],
            )
    finally:
        await producer.stop()

    seen: list[tuple[str, str, dict[str, Any]]] = []
    stop = asyncio.Event()

    async def handle(event_type: str, subject: str, data: dict[str, Any]) -> None:
        seen.append((event_type, subject, data))
        if len(seen) == 3:
            stop.set()

    await asyncio.wait_for(
        example.consume(kafka_bootstrap, topic, unique("group"), handle, stop=stop), timeout=60
    )
    assert [data["version"] for _, _, data in seen] == [1, 2, 3]
    assert {subject for _, subject, _ in seen} == {user}
