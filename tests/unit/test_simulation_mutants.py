"""The send-once simulation catches each of issue 18's and issue 20's fixes taken out in turn.

A simulation that passes proves little unless it fails when a rule it guards is broken. Each
case below puts back one mistake the fixes removed (in the real code where it can be reached
from outside, in the simulated store's copy of a statement's rule otherwise) and runs
schedules until one fails, asserting that one does within a bounded number of seeds and that
its message names the broken promise.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from notifier import delivery
from notifier.store import LateAcceptance
from tests.unit import test_send_once_simulation as sim


def _no_start_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # A call that waited for a thread past its start window goes out anyway.
    monkeypatch.setattr(sim, "refuse_late_start", lambda slot, now: None)


def _lower_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # The store keys suppressions by str.lower(), as before address keys.
    monkeypatch.setattr(sim, "address_key", str.lower)


def _search_past_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    # The store calls every row in doubt searchable, however old its first attempt.
    monkeypatch.setattr(sim, "SEARCH_WINDOW", float("inf"))


def _no_tombstone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The store's statements do not read erased_users.
    monkeypatch.setattr(sim.MemoryStore, "_erased", lambda self, p: False)


def _drop_late_acceptances(monkeypatch: pytest.MonkeyPatch) -> None:
    # mark_sent moves only rows still under the sender's claim; a late acceptance is lost.
    async def mark_sent(
        self: sim.MemoryStore, accepted: Sequence[tuple[uuid.UUID, str]], *, claim: str
    ) -> tuple[int, list[LateAcceptance]]:
        await self.world.step("mark_sent")
        self.world.reported.update(accepted)
        moved = 0
        for row_id, message_id in accepted:
            row = self.rows[row_id]
            if row.status == "pending" and row.lease_owner == claim:
                row.status, row.message_id = "sent", message_id
                self._finish(row)
                moved += 1
        return moved, []

    monkeypatch.setattr(sim.MemoryStore, "mark_sent", mark_sent)


def _template_refusals_final(monkeypatch: pytest.MonkeyPatch) -> None:
    # Postmark's template errors are refusals like any other: failed for good, no dead letter.
    monkeypatch.setattr(delivery, "TEMPLATE_ERRORS", range(0))


def _render_failures_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    # A template that cannot be rendered raises out of delivery, as before issue 20's review.
    monkeypatch.setattr(delivery, "TemplateProblem", type("NeverRaised", (Exception,), {}))


MUTANTS: dict[str, tuple[Callable[[pytest.MonkeyPatch], Any], str]] = {
    "a call started past its start window": (_no_start_window, "after its attempt was stamped"),
    "suppressions keyed by str.lower()": (_lower_keys, "was suppressed at"),
    "the search trusted past Postmark's retention": (
        _search_past_retention,
        "Postmark accepted it|accepted more than once",
    ),
    "no tombstone for deleted users": (_no_tombstone, "whose user was deleted"),
    "late acceptances dropped": (_drop_late_acceptances, "was dropped"),
    "a missing Postmark template failed for good": (
        _template_refusals_final,
        "never dead-lettered",
    ),
    "a template that cannot render raised out of delivery": (
        _render_failures_raised,
        "TemplateProblem|still pending|is recorded",
    ),
}


@pytest.mark.parametrize("mutant", MUTANTS)
def test_the_simulation_catches(mutant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    break_it, expected = MUTANTS[mutant]
    break_it(monkeypatch)

    async def first_failure() -> tuple[int, str] | None:
        for seed in range(1000):
            try:
                await sim.run_schedule(seed)
            except AssertionError as exc:
                return seed, str(exc)
            except Exception as exc:  # a notifier that died of an error the code let out
                return seed, f"{type(exc).__name__}: {exc}"
        return None

    found = asyncio.run(first_failure())
    assert found is not None, f"1,000 schedules passed with {mutant}"
    seed, message = found
    print(f"[{mutant}] caught by seed {seed}: {message.splitlines()[0][:160]}")
    assert any(part in message for part in expected.split("|")), message
