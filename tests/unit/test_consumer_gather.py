"""The notifier's gathering window merges what the fetcher holds after it with what it had:
each partition's records in order, none twice, even when the partition was taken away and
given back during the window (the fetcher then reads it again from its committed offset).
A fake consumer stands behind aiokafka's `getmany`; the window's rules run for real."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from notifier.consumer import Consumer
from tests.support.settings import make_notifier_settings

P0 = TopicPartition("t.user", 0)
P1 = TopicPartition("t.user", 1)


@dataclass(frozen=True)
class FakeRecord:
    offset: int


class Fetcher:
    """`getmany` hands out prepared answers, one per call."""

    def __init__(self, *answers: dict[TopicPartition, list[FakeRecord]]) -> None:
        self.answers = list(answers)

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        return self.answers.pop(0) if self.answers else {}


def consumer(gather: float) -> Consumer:
    settings = make_notifier_settings(
        "postgresql://u@127.0.0.1:1/x", "127.0.0.1:1", "http://127.0.0.1:1", "t",
        notifier_gather=gather,
    )  # fmt: skip
    return Consumer(settings, delivery=None, dead_letters=None, metrics=None)  # type: ignore[arg-type]


def offsets(batches: dict[TopicPartition, list[FakeRecord]]) -> dict[int, list[int]]:
    return {tp.partition: [r.offset for r in records] for tp, records in batches.items()}


async def test_a_partition_read_again_in_the_window_adds_only_what_follows() -> None:
    first = {P0: [FakeRecord(0), FakeRecord(1)]}
    # P0 was revoked and given back in the window: read again from offset 0; P1 is new.
    later = {P0: [FakeRecord(0), FakeRecord(1), FakeRecord(2)], P1: [FakeRecord(7)]}
    merged, _ = await consumer(0.05)._gather(Fetcher(later), first, time.monotonic())
    assert offsets(merged) == {0: [0, 1, 2], 1: [7]}


async def test_after_a_quiet_spell_the_batch_goes_at_once() -> None:
    first = {P0: [FakeRecord(0)]}
    merged, started = await consumer(0.05)._gather(
        Fetcher({P0: [FakeRecord(1)]}), first, last_batch=float("-inf")
    )
    assert offsets(merged) == {0: [0]}  # nothing waited for, nothing added
    assert started > 0
