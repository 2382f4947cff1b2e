"""Fault injection for drills: errors, slow answers, answers that never come in time, and a
search index that lags behind acceptance.

Faults apply to each call of `POST /email` and `POST /email/batch`. An injected error is
answered before anything is looked at, so nothing is captured. An injected timeout is the
ambiguous case a sender must survive: the answer is held back for `timeout_ms`, long after
the client gave up waiting; the messages are accepted and captured (the answer was lost) or,
with `timeout_accepts` false, not (the request was lost on its way). `search_delay_ms` keeps
each accepted message out of `GET /messages/outbound` for that long, as Postmark's search
index lags behind its acceptance.

`trickle_ms` answers slowly instead: the status and headers at once, then the body a byte at
a time, `trickle_ms` apart, for the calls named in `trickle_on` (sends, searches,
reactivations). No single read waits long, so a client whose timeout bounds each read never
gives up; the work behind the answer (a message accepted, a bounce reactivated) is done
before it starts.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ErrorStatus = Literal[429, 500, 503]
# Which calls a trickle applies to: POST /email and /email/batch, GET /messages/outbound,
# PUT /bounces/{id}/activate.
CallKind = Literal["send", "search", "reactivate"]

_ERROR_BODIES: dict[int, dict[str, Any]] = {
    429: {
        "ErrorCode": 429,
        "Message": "Rate limit exceeded: too many requests in a short time. Slow down and retry.",
    },
    500: {
        "ErrorCode": 500,
        "Message": "Internal server error: the request could not be processed. Retry later.",
    },
    503: {
        "ErrorCode": 503,
        "Message": "Service unavailable: the API is offline for maintenance. Retry later.",
    },
}


class Faults(BaseModel):
    """The faults in force."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of send calls answered `error_status`."
    )
    error_status: ErrorStatus = Field(default=503, description="The injected error's status.")
    latency_ms: int = Field(
        default=0, ge=0, le=600_000, description="Added before every send call is handled."
    )
    timeout_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of send calls whose answer is held back `timeout_ms`.",
    )
    timeout_ms: int = Field(
        default=30_000, ge=0, le=600_000, description="How long a timed-out answer is held."
    )
    timeout_accepts: bool = Field(
        default=True,
        description="Whether a timed-out call's messages are accepted (the answer was lost) "
        "or not (the request was lost).",
    )
    search_delay_ms: int = Field(
        default=0,
        ge=0,
        le=600_000,
        description="How long an accepted message stays invisible to GET /messages/outbound.",
    )
    trickle_ms: int = Field(
        default=0,
        ge=0,
        le=60_000,
        description="Delay between the bytes of the answer to each call named in `trickle_on`.",
    )
    trickle_on: tuple[CallKind, ...] = Field(
        default=("send",), description="The calls whose answers trickle."
    )


class FaultsUpdate(BaseModel):
    """A partial update of the faults: fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    error_status: ErrorStatus | None = None
    latency_ms: int | None = Field(default=None, ge=0, le=600_000)
    timeout_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    timeout_ms: int | None = Field(default=None, ge=0, le=600_000)
    timeout_accepts: bool | None = None
    search_delay_ms: int | None = Field(default=None, ge=0, le=600_000)
    trickle_ms: int | None = Field(default=None, ge=0, le=60_000)
    trickle_on: tuple[CallKind, ...] | None = None


@dataclass(frozen=True)
class Decision:
    """What to do with one call: answer an error now, or hold the answer back."""

    delay: float
    error_status: int | None = None
    hold_answer: float = 0.0
    # With a held answer: whether the messages are accepted all the same.
    accept: bool = True

    def error_body(self) -> dict[str, Any]:
        assert self.error_status is not None
        return _ERROR_BODIES[self.error_status]

    @staticmethod
    def error_body_lost() -> dict[str, Any]:
        """What a gateway says, long after the client gave up, for a request that was lost."""
        return {"ErrorCode": 504, "Message": "Gateway timeout: the request did not arrive."}


@dataclass
class Stats:
    calls: int = 0
    errors_injected: int = 0
    timeouts_injected: int = 0
    trickles_injected: int = 0
    webhooks_delivered: int = 0
    webhooks_failed: int = 0
    # messages per `POST /email/batch` call -> how many calls carried that many
    batch_sizes: Counter[int] = field(default_factory=Counter)


class FaultInjector:
    def __init__(self, *, seed: int | None) -> None:
        # Not for secrets: a seeded generator makes a drill's sequence of faults repeatable.
        self._random = random.Random(seed)  # noqa: S311
        self.faults = Faults()
        self.stats = Stats()

    def update(self, change: FaultsUpdate) -> Faults:
        self.faults = self.faults.model_copy(update=change.model_dump(exclude_none=True))
        return self.faults

    def reset(self) -> Faults:
        self.faults = Faults()
        return self.faults

    def trickle(self, kind: CallKind) -> float:
        """Seconds between the bytes of this call's answer; 0 to answer at once."""
        faults = self.faults
        if not faults.trickle_ms or kind not in faults.trickle_on:
            return 0.0
        self.stats.trickles_injected += 1
        return faults.trickle_ms / 1000

    def decide(self) -> Decision:
        """Count one call and roll the dice for it."""
        faults = self.faults
        self.stats.calls += 1
        delay = faults.latency_ms / 1000
        if faults.error_rate and self._random.random() < faults.error_rate:
            self.stats.errors_injected += 1
            return Decision(delay=delay, error_status=faults.error_status)
        if faults.timeout_rate and self._random.random() < faults.timeout_rate:
            self.stats.timeouts_injected += 1
            return Decision(
                delay=delay, hold_answer=faults.timeout_ms / 1000, accept=faults.timeout_accepts
            )
        return Decision(delay=delay)
