"""Exponential backoff with a cap and jitter, shared by the relay and the notifier."""

from __future__ import annotations

import random


class Backoff:
    """Exponential delays with a cap and jitter, so a fleet of relays does not retry in step."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * (2**self.failures))
        self.failures += 1
        delay: float = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter only
        return delay

    def reset(self) -> None:
        self.failures = 0
