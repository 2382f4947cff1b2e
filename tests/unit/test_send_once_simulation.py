"""A deterministic simulation of the send-once state machine (invariants 6 and 7).

The real `Delivery` runs in several simulated notifiers against an in-memory store with the
same rules as `notifier/store.py`'s statements and a fake Postmark with the real client's
interface. Every store and Postmark operation is a step a seeded scheduler chooses when to
let through; between steps it moves a fake clock (expiring claims, ending settle windows,
letting the search index catch up), kills notifiers, starts new ones, and suppresses
addresses. Postmark may accept a batch and lose the answer, lose the request, throttle,
fail its search, and shows a message to search only `LAG` seconds after accepting it.
Addresses come from several scripts, each mailbox spelled several ways (letter case, composed
or decomposed accents, `ß` or `SS`, final sigma); an address is suppressed under one spelling
while mail is planned to another, and the store keys both by `address_key`, as the real one.

What must hold for every schedule:
- Postmark never accepts two messages for one notification;
- nothing is accepted for a mailbox suppressed (under any spelling) before its attempt began;
- a notification marked sent names the message Postmark accepted for it;
- once the faults stop, every notification ends sent, suppressed or failed.

Assumptions, as in production (docs/architecture.md): a request reaches Postmark within
`TIMEOUT` of its attempt's start or never, and `SETTLE` ≥ `TIMEOUT` + `LAG`.

A failure prints its seed; `SIMULATION_SEED=<seed> pytest tests/unit/test_send_once_simulation.py`
replays it alone, and `SIMULATION_SEEDS=<n>` runs more schedules.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from notifier.delivery import Delivery
from notifier.metrics import NotifierMetrics
from notifier.plans import PlannedEmail, SourceRecord, plan
from notifier.postmark import Accepted, MessageResult, PostmarkUnavailable
from notifier.store import ClaimedRow
from postroom import events
from postroom.addresses import address_key
from tests.support.settings import make_notifier_settings

TIMEOUT = 2.0  # POSTMARK_TIMEOUT
LEASE = 3.0  # NOTIFIER_LEASE
LAG = 4.0  # how far Postmark's search lags behind acceptance, at most
SETTLE = TIMEOUT + LAG  # NOTIFIER_SEARCH_SETTLE
MAX_ATTEMPTS = 6
CHAOS_STEPS = 160
CALM_STEPS = 3000


CURRENT_WORKER: contextvars.ContextVar[str] = contextvars.ContextVar("worker")

# Mailboxes, each spelled several ways by the people who own them ({n}: which one). Which
# spellings are one mailbox is written out here, not computed: the check's truth.
MAILBOXES = [
    ["user{n}@example.com", "User{n}@Example.COM"],
    ["émile{n}@example.com", "ÉMILE{n}@example.com", "e\u0301mile{n}@example.com"],
    ["дмитрий{n}@example.com", "Дмитрий{n}@example.com", "ДМИТРИЙ{n}@example.com"],
    ["straße{n}@example.com", "STRASSE{n}@example.com", "Strasse{n}@example.com"],
    ["οδος{n}@example.com", "ΟΔΟΣ{n}@example.com", "Οδοσ{n}@example.com"],
    ["zoë{n}@example.com", "ZOË{n}@example.com", "zoe\u0308{n}@example.com"],
]


class Crashed(BaseException):
    """A simulated notifier died at this step."""


# -- the scheduler ------------------------------------------------------------------------------


@dataclass
class Clock:
    now: float = 0.0


@dataclass
class Parked:
    worker: str
    what: str
    go: asyncio.Future[None]


@dataclass
class World:
    rng: random.Random
    clock: Clock = field(default_factory=Clock)
    parked: list[Parked] = field(default_factory=list)
    dead: set[str] = field(default_factory=set)
    trace: list[str] = field(default_factory=list)

    async def step(self, what: str) -> None:
        """Wait until the scheduler lets the current worker's next operation happen."""
        worker = CURRENT_WORKER.get()
        if worker in self.dead:
            raise Crashed(worker)
        go: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.parked.append(Parked(worker, what, go))
        await go
        if worker in self.dead:
            raise Crashed(worker)


# -- the fakes ----------------------------------------------------------------------------------


@dataclass
class Row:
    plan: PlannedEmail
    source: SourceRecord | None
    status: str = "pending"
    attempts: int = 0
    attempt_id: str | None = None
    attempt_started_at: float | None = None
    attempt_open: bool = False
    doubt_since: float | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    next_attempt_at: float = 0.0
    message_id: str | None = None
    last_error: str | None = None


class MemoryStore:
    """`NotificationStore` over a dict and a fake clock: the same rules as its statements."""

    def __init__(
        self,
        world: World,
        rows: dict[uuid.UUID, Row],
        suppressed: dict[str, float],
        attempt_started: dict[str, float],
    ):
        self.world = world
        self.rows = rows
        self.suppressed = suppressed  # address key -> when it was suppressed
        self.attempts_begun: list[tuple[uuid.UUID, float]] = []
        self.attempt_started = attempt_started  # attempt id -> when it began

    @property
    def now(self) -> float:
        return self.world.clock.now

    def _reason(self, address: str) -> str | None:
        return "HardBounce" if address_key(address) in self.suppressed else None

    def _free(self, row: Row) -> bool:
        return row.lease_until is None or row.lease_until < self.now

    def _claimed(self, row: Row, *, started: bool = False) -> ClaimedRow:
        return ClaimedRow(
            id=row.plan.id,
            source=row.source,
            attempts=row.attempts,
            in_doubt=row.doubt_since is not None,
            settled=row.doubt_since is None or row.doubt_since + SETTLE <= self.now,
            suppressed=None if started else self._reason(row.plan.recipient),
            last_error=row.last_error,
            started=started,
        )

    async def record(
        self,
        planned: Sequence[PlannedEmail],
        sources: dict[uuid.UUID, SourceRecord],
        *,
        not_allowed: dict[uuid.UUID, str],
        attempt_id: str,
        claim: str,
    ) -> tuple[list[ClaimedRow], list[tuple[PlannedEmail, str]]]:
        await self.world.step("record")
        claimed: list[ClaimedRow] = []
        suppressed: list[tuple[PlannedEmail, str]] = []
        for p in planned:
            if p.id in self.rows:
                continue
            row = Row(plan=p, source=sources[p.event_id], next_attempt_at=self.now)
            self.rows[p.id] = row
            reason = not_allowed.get(p.id) or (
                f"suppressed: {r}" if (r := self._reason(p.recipient)) else None
            )
            if reason:
                row.status, row.last_error, row.source = "suppressed", reason, None
                suppressed.append((p, reason))
                continue
            row.attempts, row.attempt_id = 1, attempt_id
            row.attempt_started_at, row.attempt_open = self.now, True
            row.lease_owner, row.lease_until = claim, self.now + LEASE
            self.attempts_begun.append((p.id, self.now))
            self.attempt_started[attempt_id] = self.now
            claimed.append(self._claimed(row, started=True))
        return claimed, suppressed

    async def claim(
        self, ids: Sequence[uuid.UUID] | None = None, *, claim: str, limit: int = 500
    ) -> list[ClaimedRow]:
        await self.world.step("claim")
        candidates = [
            row
            for row in self.rows.values()
            if (row.plan.id in ids if ids is not None else row.source is not None)
            and row.status == "pending"
            and row.next_attempt_at <= self.now
            and self._free(row)
        ]
        candidates.sort(key=lambda row: row.next_attempt_at)
        out = []
        for row in candidates[:limit]:
            row.lease_owner, row.lease_until = claim, self.now + LEASE
            if row.attempt_open:
                row.doubt_since = row.attempt_started_at
            row.attempt_open = False
            out.append(self._claimed(row))
        return out

    async def start_attempt(
        self, ids: Sequence[uuid.UUID], attempt_id: str, *, claim: str
    ) -> dict[uuid.UUID, str | None]:
        await self.world.step("start_attempt")
        held: dict[uuid.UUID, str | None] = {}
        for row_id in ids:
            row = self.rows[row_id]
            if row.status != "pending" or row.lease_owner != claim:
                continue
            if row.lease_until is None or row.lease_until <= self.now:
                continue
            held[row_id] = self._reason(row.plan.recipient)
            if held[row_id] is None:
                row.attempts += 1
                row.attempt_id, row.attempt_started_at = attempt_id, self.now
                row.attempt_open, row.lease_until = True, self.now + LEASE
                self.attempts_begun.append((row_id, self.now))
                self.attempt_started[attempt_id] = self.now
        return held

    async def mark_sent(self, accepted: Sequence[tuple[uuid.UUID, str]]) -> int:
        await self.world.step("mark_sent")
        moved = 0
        for row_id, message_id in accepted:
            row = self.rows[row_id]
            if row.status == "pending":
                row.status, row.message_id = "sent", message_id
                self._finish(row)
                moved += 1
        return moved

    async def mark_suppressed(
        self, blocked: Sequence[tuple[uuid.UUID, str]], *, inactive_at_postmark: bool = False
    ) -> int:
        await self.world.step("mark_suppressed")
        return self._final("suppressed", blocked)

    async def mark_failed(self, failed: Sequence[tuple[uuid.UUID, str]]) -> int:
        await self.world.step("mark_failed")
        return self._final("failed", failed)

    async def release(
        self,
        delays: dict[uuid.UUID, float],
        *,
        claim: str,
        ambiguous: bool = False,
        count_attempt: bool = False,
        error: str | None = None,
    ) -> None:
        await self.world.step("release")
        for row_id, delay in delays.items():
            row = self.rows[row_id]
            if row.status != "pending" or row.lease_owner != claim:
                continue
            if ambiguous and row.attempt_open:
                row.doubt_since = row.attempt_started_at
            row.attempt_open = False
            row.attempts += int(count_attempt)
            row.next_attempt_at = self.now + delay
            row.last_error = error or row.last_error
            row.lease_owner = row.lease_until = None

    async def wait_for_settle(self, ids: Sequence[uuid.UUID], *, claim: str) -> None:
        await self.world.step("wait_for_settle")
        for row_id in ids:
            row = self.rows[row_id]
            if row.status != "pending" or row.lease_owner != claim:
                continue
            assert row.doubt_since is not None
            row.attempt_open = False
            row.next_attempt_at = max(self.now, row.doubt_since + SETTLE)
            row.lease_owner = row.lease_until = None

    async def keep_sources(self, sources: dict[uuid.UUID, SourceRecord]) -> None:
        await self.world.step("keep_sources")

    def _final(self, status: str, rows: Sequence[tuple[uuid.UUID, str]]) -> int:
        moved = 0
        for row_id, error in rows:
            row = self.rows[row_id]
            if row.status == "pending":
                row.status, row.last_error = status, error
                self._finish(row)
                moved += 1
        return moved

    @staticmethod
    def _finish(row: Row) -> None:
        row.attempt_open = False
        row.lease_owner = row.lease_until = None
        row.source = None


@dataclass
class Acceptance:
    notification_id: str
    recipient: str
    message_id: str
    at: float


class FakePostmark:
    """Postmark as `notifier.postmark.Postmark` shows it, with faults while `faulty`."""

    def __init__(self, world: World, attempt_started: dict[str, float]) -> None:
        self.world = world
        self.attempt_started = attempt_started
        self.faulty = True
        self.accepted: list[Acceptance] = []
        self.lag: dict[str, float] = {}  # message id -> searchable after

    async def send_batch(self, messages: Sequence[dict[str, Any]]) -> list[MessageResult]:
        # Every message belongs to an attempt recorded before the call...
        attempt_id = messages[0]["Metadata"]["attempt_id"]
        assert attempt_id in self.attempt_started, "a send without a recorded attempt"
        # ...and reaches Postmark within TIMEOUT of that attempt's start, or never.
        sent_at = self.attempt_started[attempt_id]
        await self.world.step("postmark request")
        rng = self.world.rng
        fault = rng.choice(
            ["none", "lost-answer", "lost-request", "throttled"] if self.faulty else ["none"]
        )
        arrived_in_time = self.world.clock.now - sent_at <= TIMEOUT
        results: list[MessageResult] = []
        if arrived_in_time and fault in ("none", "lost-answer"):
            for message in messages:
                message_id = uuid.uuid4().hex
                self.accepted.append(
                    Acceptance(
                        message["Metadata"]["notification_id"],
                        message["To"],
                        message_id,
                        self.world.clock.now,
                    )
                )
                self.lag[message_id] = self.world.clock.now + rng.uniform(0, LAG)
                results.append(Accepted(message_id))
        await self.world.step("postmark answer")
        if fault == "throttled":
            raise PostmarkUnavailable("429", ambiguous=False)
        if fault != "none" or not arrived_in_time:
            raise PostmarkUnavailable("timed out", ambiguous=True)
        return results

    async def find_sent(self, notification_id: str) -> str | None:
        await self.world.step("postmark search")
        if self.faulty and self.world.rng.random() < 0.25:
            raise PostmarkUnavailable("search failed", ambiguous=True)
        now = self.world.clock.now
        visible = [
            a
            for a in self.accepted
            if a.notification_id == notification_id and self.lag[a.message_id] <= now
        ]
        return min(visible, key=lambda a: a.at).message_id if visible else None


class FakeDeadLetters:
    def __init__(self, world: World) -> None:
        self.world = world
        self.faulty = True
        self.written: list[uuid.UUID | None] = []

    async def write(
        self, source: SourceRecord, *, reason: str, error: str, notification_id: uuid.UUID | None
    ) -> None:
        await self.world.step("dead letter")
        if self.faulty and self.world.rng.random() < 0.3:
            raise ConnectionError("dead-letter topic unreachable")
        self.written.append(notification_id)


# -- one schedule ---------------------------------------------------------------------------------


def source_for(event: events.EventData, offset: int) -> SourceRecord:
    event_id = uuid.uuid4()
    headers = (
        ("ce_specversion", "1.0"),
        ("ce_id", str(event_id)),
        ("ce_type", event.event_type),
        ("content-type", "application/json"),
    )
    return SourceRecord(
        topic="sim.user",
        partition=0,
        offset=offset,
        key=event.aggregate_id(),
        headers=headers,
        value=event.model_dump_json(),
    )


def spelling(rng: random.Random, mailbox: tuple[int, int]) -> str:
    """One of the ways mailbox (kind, n) is written."""
    kind, n = mailbox
    return rng.choice(MAILBOXES[kind]).format(n=n)


def make_events(rng: random.Random) -> tuple[list[SourceRecord], dict[str, tuple[int, int]]]:
    """The user events, and the mailbox each spelling in them belongs to."""
    records = []
    mailbox_of: dict[str, tuple[int, int]] = {}
    for n in range(rng.randint(1, 4)):
        user = uuid.UUID(int=rng.getrandbits(128))
        old, new = (rng.randrange(len(MAILBOXES)), n), (rng.randrange(len(MAILBOXES)), n + 10)
        email, new_email = spelling(rng, old), spelling(rng, new)
        for kind, count in (old, new):
            for way in MAILBOXES[kind]:
                mailbox_of[way.format(n=count)] = (kind, count)
        now = datetime(2026, 1, 1, tzinfo=UTC)
        data: events.EventData
        if rng.random() < 0.7:
            data = events.UserRegistered(
                user_id=user, version=1, email=email, name="Sim", registered_at=now
            )
        else:
            data = events.UserEmailChanged(
                user_id=user,
                version=2,
                old_email=email,
                new_email=new_email,
                name="Sim",
            )
        records.append(source_for(data, n))
    return records, mailbox_of


async def run_schedule(seed: int) -> None:
    rng = random.Random(seed)
    uuid_rng = random.Random(seed ^ 0x5EED)
    world = World(rng=rng)
    rows: dict[uuid.UUID, Row] = {}
    suppressed: dict[str, float] = {}
    suppressed_mailboxes: dict[tuple[int, int], float] = {}
    attempt_started: dict[str, float] = {}
    postmark = FakePostmark(world, attempt_started)
    dead_letters = FakeDeadLetters(world)
    settings = make_notifier_settings(
        "postgresql://sim@127.0.0.1/sim",
        "127.0.0.1:9",
        "http://127.0.0.1:9",
        "sim",
        postmark_timeout=TIMEOUT,
        notifier_lease=LEASE,
        notifier_search_settle=SETTLE,
        notifier_max_attempts=MAX_ATTEMPTS,
        notifier_backoff_initial=0.2,
        notifier_backoff_max=2.0,
        notifier_batch_size=rng.choice([1, 2, 500]),  # several Postmark calls per round
    )
    records, mailbox_of = make_events(rng)
    planned = [(record, plan(record.event())) for record in records]
    every = {p.id: p for _, plans in planned for p in plans}
    metrics = NotifierMetrics(CollectorRegistry())
    stores: list[MemoryStore] = []

    def new_delivery() -> Delivery:
        store = MemoryStore(world, rows, suppressed, attempt_started)
        stores.append(store)
        return Delivery(
            settings,
            store=store,  # type: ignore[arg-type]
            postmark=postmark,
            dead_letters=dead_letters,
            metrics=metrics,
        )

    async def notifier(name: str, delivery: Delivery, intake: bool) -> None:
        CURRENT_WORKER.set(name)
        if intake:  # this notifier read the records (again, after a rebalance or a crash)
            await delivery.intake(
                [p for _, plans in planned for p in plans],
                {record.event().event_id: record for record, _ in planned},
            )
        while True:
            await delivery.sweep()

    workers: dict[str, asyncio.Task[None]] = {}
    names = iter(range(1_000_000))

    def start(intake: bool) -> None:
        name = f"w{next(names)}"
        workers[name] = asyncio.create_task(notifier(name, new_delivery(), intake), name=name)

    async def quiesce() -> None:
        stable = 0
        last = -1
        while stable < 3:
            await asyncio.sleep(0)
            count = len(world.parked)
            stable = stable + 1 if count == last else 0
            last = count
        for name, task in workers.items():
            if task.done() and not task.cancelled() and name not in world.dead:
                error = task.exception()
                if error is not None and not isinstance(error, Crashed):
                    raise error

    def let_one_through() -> None:
        live = [p for p in world.parked if not p.go.done()]
        if not live:
            return
        chosen = rng.choice(live)
        world.parked.remove(chosen)
        world.trace.append(f"{world.clock.now:7.2f} {chosen.worker} {chosen.what}")
        chosen.go.set_result(None)

    # uuid4 inside the code under test must not make the schedule depend on the OS.
    original_uuid4 = uuid.uuid4
    uuid.uuid4 = lambda: uuid.UUID(int=uuid_rng.getrandbits(128), version=4)  # type: ignore[assignment]
    try:
        start(intake=True)
        start(intake=rng.random() < 0.5)
        for _ in range(CHAOS_STEPS):
            await quiesce()
            roll = rng.random()
            if roll < 0.70:
                let_one_through()
            elif roll < 0.85:
                world.clock.now += rng.choice([0.1, 0.5, 1.0, 2.5, LEASE, SETTLE])
            elif roll < 0.90:
                alive = [n for n in workers if n not in world.dead]
                if alive and (len(alive) > 1 or rng.random() < 0.3):
                    victim = rng.choice(alive)
                    world.dead.add(victim)
                    world.trace.append(f"{world.clock.now:7.2f} {victim} killed")
                    for p in world.parked:
                        if p.worker == victim and not p.go.done():
                            p.go.set_result(None)
            elif roll < 0.95:
                start(intake=rng.random() < 0.5)
            else:
                # A mailbox mail is planned to, suppressed under any of its spellings.
                mailbox = mailbox_of[rng.choice([p.recipient for p in every.values()])]
                address = spelling(rng, mailbox)
                if mailbox not in suppressed_mailboxes:
                    suppressed_mailboxes[mailbox] = world.clock.now
                    suppressed[address_key(address)] = world.clock.now
                    world.trace.append(f"{world.clock.now:7.2f} {address} suppressed")
        # Calm: faults stop, one notifier at least, time keeps moving.
        postmark.faulty = dead_letters.faulty = False
        # Records whose offsets no notifier committed are read again by a live one.
        start(intake=True)
        for _ in range(CALM_STEPS):
            await quiesce()
            if all(row.status != "pending" for row in rows.values()) and len(rows) == len(every):
                break
            if world.parked and rng.random() < 0.8:
                let_one_through()
            else:
                world.clock.now += 0.5
        try:
            check(rows, every, suppressed_mailboxes, mailbox_of, postmark, stores)
        except AssertionError as exc:
            shown = world.trace if "SIMULATION_SEED" in os.environ else world.trace[-25:]
            raise AssertionError(f"{exc}\n" + "\n".join(shown)) from None
    finally:
        uuid.uuid4 = original_uuid4
        for task in workers.values():
            task.cancel()
        for p in world.parked:
            if not p.go.done():
                p.go.cancel()
        await asyncio.gather(*workers.values(), return_exceptions=True)


def check(
    rows: dict[uuid.UUID, Row],
    every: dict[uuid.UUID, PlannedEmail],
    suppressed: dict[tuple[int, int], float],
    mailbox_of: dict[str, tuple[int, int]],
    postmark: FakePostmark,
    stores: list[MemoryStore],
) -> None:
    by_notification: dict[str, list[Acceptance]] = {}
    for a in postmark.accepted:
        by_notification.setdefault(a.notification_id, []).append(a)
    twice = {n: len(found) for n, found in by_notification.items() if len(found) > 1}
    assert not twice, f"accepted more than once: {twice}"

    begun = sorted(b for store in stores for b in store.attempts_begun)
    for a in postmark.accepted:
        started = max(t for n, t in begun if str(n) == a.notification_id and t <= a.at)
        since = suppressed.get(mailbox_of[a.recipient])
        assert since is None or since >= started, (
            f"{a.recipient} was suppressed at {since} and mailed by an attempt begun at {started}"
        )

    assert set(rows) == set(every), "every planned email is recorded"
    stuck = {str(r.plan.id): r.status for r in rows.values() if r.status == "pending"}
    assert not stuck, f"still pending after the faults stopped: {stuck}"
    for row in rows.values():
        if row.status == "sent":
            accepted = [a.message_id for a in by_notification.get(str(row.plan.id), [])]
            assert row.message_id in accepted, "a sent notification names its accepted message"


def seeds() -> list[int]:
    if "SIMULATION_SEED" in os.environ:
        return [int(os.environ["SIMULATION_SEED"])]
    return list(range(int(os.environ.get("SIMULATION_SEEDS", "1000"))))


def test_send_once_holds_over_many_schedules() -> None:
    failures: list[str] = []

    async def run_all() -> None:
        for seed in seeds():
            try:
                await run_schedule(seed)
            except AssertionError as exc:
                failures.append(f"seed {seed}: {str(exc)[:2000]}")
                if len(failures) >= 5:
                    return

    asyncio.run(run_all())
    assert not failures, "replay with SIMULATION_SEED=<seed>:\n" + "\n".join(failures)
