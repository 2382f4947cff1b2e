"""Exponential backoff with a cap and jitter, shared by the relay and the notifier."""

from __future__ import annotations

import random


def delay_after(failures: int, *, initial: float, cap: float) -> float:
    """The wait after `failures` failures in a row (1 = the first): doubling from `initial`
    up to `cap`, then jittered into its upper half so a fleet does not retry in step."""
    ceiling = min(cap, initial * 2.0 ** max(0, failures - 1))
    jitter: float = random.uniform(0, ceiling / 2)  # noqa: S311 - jitter only
    return ceiling / 2 + jitter


class Backoff:
    """Exponential delays with a cap and jitter, so a fleet of relays does not retry in step."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return delay_after(self.failures, initial=self.initial, cap=self.cap)

    def reset(self) -> None:
        self.failures = 0
