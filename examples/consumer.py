"""A minimal consumer of Postroom's events, as another service would write it.

    python examples/consumer.py --bootstrap 127.0.0.1:9092 --topic postroom.user

Each record is a CloudEvent in Kafka's binary mode: the headers carry `ce_id`, `ce_type`,
`ce_time`, `ce_subject`; the value is the event's JSON data. Delivery is at-least-once and
ordered per key (the user id), so a consumer drops repeats by `ce_id`. Here the ids seen are
kept in memory, which is enough for a sketch; a real service keeps them with its own state
(for example a unique column written in the same transaction as the effect), and commits its
Kafka offsets only after that transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

Handler = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class SeenIds:
    """The most recent event ids, to drop repeats (bounded, so memory stays flat)."""

    def __init__(self, keep: int = 100_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._keep = keep

    def first_time(self, event_id: str) -> bool:
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._keep:
            self._ids.popitem(last=False)
        return True


async def consume(
    bootstrap: str, topic: str, group: str, handle: Handler, *, stop: asyncio.Event
) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    seen = SeenIds()
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    # A null header (Kafka Connect writes one for a null column) is absent.
                    headers = {
                        key: value.decode(errors="replace")
                        for key, value in record.headers
                        if value is not None
                    }
                    try:
                        event_id, event_type = headers["ce_id"], headers["ce_type"]
                        data = json.loads(record.value or b"")
                    except (KeyError, ValueError):
                        # Not a CloudEvent: never let it block the partition. A real service
                        # keeps it aside (a dead-letter topic) for someone to look at.
                        print(f"skipped unreadable record at offset {record.offset}", flush=True)
                        continue
                    if not seen.first_time(event_id):
                        continue
                    await handle(event_type, headers.get("ce_subject", ""), data)
            if batches:
                await consumer.commit()  # after the effects: at-least-once, never at-most
    finally:
        await consumer.stop()


async def _print(event_type: str, subject: str, data: dict[str, Any]) -> None:
    print(f"{event_type:<22} {subject}  {json.dumps(data)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="postroom.user")
    parser.add_argument("--group", default="example-consumer")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(consume(args.bootstrap, args.topic, args.group, _print, stop=asyncio.Event()))


if __name__ == "__main__":
    main()
