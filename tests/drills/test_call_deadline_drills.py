"""Drills for invariant 11, a Postmark call never outlives its claim: slow (trickling)
reactivations filling the notifier's Postmark threads while emails are due, with two
notifiers and with one, and a trickling answer to the send itself. Each counts what the
sandbox captured against what the notifications say: no email twice, none to an address
suppressed before its call could still be on its way, and every status true to what Postmark
accepted.

Settings keep the ratios of the defaults (NOTIFIER_LEASE 60 s, NOTIFIER_SEARCH_SETTLE 60 s,
POSTMARK_TIMEOUT 10 s) scaled down tenfold for lease and settle, and POSTMARK_TIMEOUT 1 s.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from postroom_cli.embedded import free_port
from tests.support.names import address
from tests.support.postmark import Sandbox, captured, sandbox_client, sandbox_stats
from tests.support.processes import NotifierProcess
from tests.support.settings import (
    POSTMARK_TOKEN,
    WEBHOOK_PASSWORD,
    WEBHOOK_USER,
    make_notifier_settings,
)
from tests.support.stack import AUTH, api_and_relay, register
from tests.support.waiting import ready, wait_until

pytestmark = pytest.mark.kafka

TIMEOUT = 1.0
LEASE = 6.0
SETTLE = 6.0
# The longest a call in flight when its address is suppressed may still take to reach
# Postmark: POSTMARK_TIMEOUT and the window a call has to start in.
REACH = TIMEOUT + 0.5
# Each reactivation's answer (~900 bytes) trickles in over about 10 s, a byte every 12 ms:
# far longer than the claim, and never long enough between bytes to trip a read timeout.
SLOW_REACTIVATIONS = {"trickle_ms": 12, "trickle_on": ["reactivate"]}
FLOOD = 16  # more than the old pool's 12 threads


@dataclass
class Verdict:
    """What Postmark accepted for a set of addresses, against what their notifications say."""

    emails: int
    captured: int
    duplicates: int
    after_suppression: int
    untrue: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{self.emails} emails due, {self.captured} captured, {self.duplicates} duplicates, "
            f"{self.after_suppression} to an address already suppressed, "
            f"{len(self.untrue)} statuses untrue {sorted(self.untrue.values())}"
        )


def _received(message: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(message["ReceivedAt"])


async def verdict(
    db: asyncpg.Connection,
    postmark: httpx.AsyncClient,
    emails: list[str],
    suppressed_at: dict[str, datetime],
) -> Verdict:
    messages = {email: await captured(postmark, email) for email in emails}
    by_notification: dict[str, list[dict[str, Any]]] = {}
    for found in messages.values():
        for message in found:
            by_notification.setdefault(message["Metadata"]["notification_id"], []).append(message)
    late = [
        message
        for email, found in messages.items()
        if email in suppressed_at
        for message in found
        if _received(message) > suppressed_at[email] + timedelta(seconds=REACH)
    ]
    rows = await db.fetch(
        "SELECT id, status, message_id FROM notifications WHERE recipient = ANY($1)", emails
    )
    untrue: dict[str, str] = {}
    for row in rows:
        accepted = [m["MessageID"] for m in by_notification.get(str(row["id"]), [])]
        if accepted and (row["status"] != "sent" or row["message_id"] not in accepted):
            untrue[str(row["id"])] = f"{row['status']} yet accepted"
        elif not accepted and row["status"] == "sent":
            untrue[str(row["id"])] = "sent yet nothing accepted"
    assert len(rows) == len(emails), "every email is recorded"
    return Verdict(
        emails=len(emails),
        captured=sum(len(found) for found in messages.values()),
        duplicates=sum(len(found) - 1 for found in by_notification.values()),
        after_suppression=len(late),
        untrue=untrue,
    )


async def bounced_addresses(
    notifier: httpx.AsyncClient, postmark: httpx.AsyncClient, count: int
) -> list[str]:
    """Addresses a hard bounce made inactive at Postmark and suppressed here (its webhook
    handed to the notifier, as Postmark would): an operator may reactivate each."""
    emails = [address("bounced") for _ in range(count)]
    for email in emails:
        sent = await postmark.post(
            "/email",
            headers={"X-Postmark-Server-Token": POSTMARK_TOKEN},
            json={
                "From": "hello@postroom.test",
                "To": email,
                "Subject": "bounce me",
                "TextBody": "x",
                "Headers": [{"Name": "X-PM-Bounce-Type", "Value": "HardBounce"}],
            },
        )
        assert sent.json()["ErrorCode"] == 0

    async def payloads() -> dict[str, Any] | None:
        hooks = (await postmark.get("/api/webhooks")).json()
        found = {h["Recipient"]: h["Payload"] for h in hooks if h["Recipient"] in emails}
        return found if len(found) == count else None

    bounces = await wait_until(payloads, what="the bounce webhooks", within=20)
    for email in emails:
        answer = await notifier.post(
            "/webhooks/postmark",
            content=json.dumps(bounces[email]),
            auth=(WEBHOOK_USER, WEBHOOK_PASSWORD),
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == 200, answer.text
    return emails


class ReactivationFlood:
    """Operators lifting bounced addresses, each again as soon as it was refused for being
    slow, until stopped: the notifier is never without reactivations in flight."""

    def __init__(self, notifier_url: str, emails: list[str]) -> None:
        self._client = httpx.AsyncClient(base_url=notifier_url, headers=AUTH, timeout=120)
        self._emails = emails
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.answers: Counter[int] = Counter()
        self.slowest = 0.0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._lift(email)) for email in self._emails]

    @property
    def answered(self) -> int:
        return sum(self.answers.values())

    async def _lift(self, email: str) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            answer = await self._client.delete(f"/v1/suppressions/{email}")
            self.slowest = max(self.slowest, loop.time() - started)
            self.answers[answer.status_code] += 1
            if answer.status_code != 503:
                return  # lifted, or refused for good: nothing to ask again
            assert answer.json()["type"] == "urn:postroom:problem:postmark-unavailable"

    async def stop(self) -> None:
        """Ask no more, and wait for every reactivation still in flight to end."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)
        await self._client.aclose()


async def flood_under_way(postmark: httpx.AsyncClient, flood: ReactivationFlood) -> bool:
    """Reactivations fill every thread the notifier gives them (a 12-thread pool shared with
    sends; or their own threads, which then refuse the others within POSTMARK_TIMEOUT)."""
    trickling = (await sandbox_stats(postmark))["trickles_injected"]
    return bool(trickling >= 12 or flood.answered)


async def suppress(notifier: httpx.AsyncClient, email: str) -> datetime:
    """An operator suppresses `email`; when the notifier recorded it."""
    answer = await notifier.post("/v1/suppressions", json={"email": email})
    assert answer.status_code == 201, answer.text
    return datetime.fromisoformat(answer.json()["created_at"])


async def statuses(db: asyncpg.Connection, emails: list[str]) -> Counter[str]:
    rows = await db.fetch("SELECT status FROM notifications WHERE recipient = ANY($1)", emails)
    return Counter(row["status"] for row in rows)


async def late_acceptances(notifier: httpx.AsyncClient, emails: list[str]) -> int:
    """Late acceptances recorded on the notifications of `emails` (their API answer)."""
    late = 0
    for email in emails:
        answer = await notifier.get("/v1/notifications", params={"email": email})
        answer.raise_for_status()
        late += sum(len(item.get("late_message_ids", [])) for item in answer.json()["items"])
    return late


async def test_slow_reactivations_filling_the_pool_never_make_two_notifiers_send_twice(
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    sandbox_faults: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The reproduced scenario: an operator's reactivations trickle in from Postmark, one
    notifier's Postmark threads fill with them, registrations arrive. Before, that
    notifier's sends queued behind them past their claim; the other notifier reclaimed the
    rows, found nothing at Postmark (nothing had left) and sent; then the queued calls went
    out too (8 registrations, 11 emails)."""
    emails = [address("queued") for _ in range(8)]
    async with (
        api_and_relay(database_url, kafka_bootstrap) as (api, prefix),
        sandbox_client(sandbox) as postmark,
    ):
        base = make_notifier_settings(
            database_url,
            kafka_bootstrap,
            sandbox.url,
            prefix,
            postmark_timeout=TIMEOUT,
            notifier_lease=LEASE,
            notifier_search_settle=SETTLE,
        )
        busy, other = (
            NotifierProcess(base.model_copy(update={"notifier_port": free_port()}))
            for _ in range(2)
        )
        busy.start()
        other.start()
        try:
            async with (
                httpx.AsyncClient(base_url=busy.url, headers=AUTH, timeout=10) as notifier,
                httpx.AsyncClient(base_url=other.url, timeout=10) as second,
            ):
                await wait_until(lambda: ready(notifier), what="the first notifier", within=30)
                await wait_until(lambda: ready(second), what="the second notifier", within=30)

                async def both_assigned() -> bool:
                    return all("partitions assigned" in p.log() for p in (busy, other))

                await wait_until(both_assigned, what="partitions for both", within=30)
                bounced = await bounced_addresses(notifier, postmark, FLOOD)
                await postmark.put("/api/faults", json=SLOW_REACTIVATIONS)
                flood = ReactivationFlood(busy.url, bounced)
                flood.start()
                await wait_until(
                    lambda: flood_under_way(postmark, flood), what="the flood", within=30
                )
                for email in emails:
                    await register(api, email)

                async def settled() -> bool:
                    found = await statuses(db, emails)
                    return sum(found.values()) == len(emails) and not found["pending"]

                await wait_until(settled, what="every email to settle", within=60)
                await flood.stop()  # the old pool runs what queued behind the reactivations
                await asyncio.sleep(1.0)  # a queued send would have been captured by now
                still_suppressed = await db.fetchval(
                    "SELECT count(*) FROM suppressions WHERE email = ANY($1)", bounced
                )
                found = await verdict(db, postmark, emails, {})
                late = await late_acceptances(notifier, emails)
        finally:
            for process in (busy, other):
                if process.alive:
                    process.stop()

    with capsys.disabled():
        print(
            f"\n[queued behind reactivations, 2 notifiers] {found.line()}; reactivations "
            f"answered {dict(flood.answers)}, the slowest in {flood.slowest:.1f} s; "
            f"{late} late acceptances"
        )
    assert found.duplicates == 0
    assert found.captured == len(emails)
    assert found.untrue == {}
    # The operator got a clear answer in time, and nothing changed for a reactivation cut short.
    assert set(flood.answers) == {503}
    assert flood.slowest < 2 * TIMEOUT + 1
    assert still_suppressed == len(bounced)


async def test_a_trickling_send_answer_ends_at_the_deadline_and_the_status_stays_true(
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    sandbox_faults: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Postmark accepts each send at once and its answer trickles in (~8 s, a byte every
    50 ms); the addresses are suppressed meanwhile. Before, the call lasted the whole answer:
    the claim expired, the retry loop marked the rows suppressed, and the acceptance that
    came afterwards was dropped (suppressed rows, mail sent). Now the call ends at
    POSTMARK_TIMEOUT in doubt, and Postmark is searched before a row is marked suppressed."""
    emails = [address("trickled") for _ in range(4)]
    async with (
        api_and_relay(database_url, kafka_bootstrap) as (api, prefix),
        sandbox_client(sandbox) as postmark,
    ):
        settings = make_notifier_settings(
            database_url,
            kafka_bootstrap,
            sandbox.url,
            prefix,
            notifier_port=free_port(),
            postmark_timeout=TIMEOUT,
            notifier_lease=3.0,
            notifier_search_settle=2.0,
        )
        process = NotifierProcess(settings)
        process.start()
        try:
            async with httpx.AsyncClient(
                base_url=process.url, headers=AUTH, timeout=10
            ) as notifier:
                await wait_until(lambda: ready(notifier), what="the notifier", within=30)
                await postmark.put("/api/faults", json={"trickle_ms": 50, "trickle_on": ["send"]})
                for email in emails:
                    await register(api, email)

                async def accepted() -> bool:
                    return all([await captured(postmark, email) for email in emails])

                await wait_until(accepted, what="Postmark to accept every email", within=30)
                suppressed_at = {email: await suppress(notifier, email) for email in emails}

                async def settled() -> bool:
                    found = await statuses(db, emails)
                    return sum(found.values()) == len(emails) and not found["pending"]

                await wait_until(settled, what="every email to settle", within=60)
                await postmark.delete("/api/faults")
                await asyncio.sleep(1.0)  # a second send would have been captured by now
                found = await verdict(db, postmark, emails, suppressed_at)
                final = await statuses(db, emails)
                late = await late_acceptances(notifier, emails)
        finally:
            if process.alive:
                process.stop()

    with capsys.disabled():
        print(f"\n[trickling send answer] {found.line()}; {dict(final)}; {late} late")
    assert found.duplicates == 0
    assert found.after_suppression == 0
    assert found.untrue == {}
    assert final == Counter({"sent": len(emails)})  # each was accepted before its suppression


async def test_one_notifier_never_mails_an_address_suppressed_while_its_send_waited(
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
    sandbox_faults: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One notifier, its Postmark threads full of trickling reactivations; a registration's
    send is due and the address is suppressed meanwhile. Before, the send queued behind the
    reactivations past its claim; the retry loop reclaimed the row, saw the suppression and
    marked it suppressed, and the queued call then mailed the suppressed address."""
    email = address("raced")
    async with (
        api_and_relay(database_url, kafka_bootstrap) as (api, prefix),
        sandbox_client(sandbox) as postmark,
    ):
        settings = make_notifier_settings(
            database_url,
            kafka_bootstrap,
            sandbox.url,
            prefix,
            notifier_port=free_port(),
            postmark_timeout=TIMEOUT,
            notifier_lease=3.0,
            notifier_search_settle=3.0,
        )
        process = NotifierProcess(settings)
        process.start()
        try:
            async with httpx.AsyncClient(
                base_url=process.url, headers=AUTH, timeout=10
            ) as notifier:
                await wait_until(lambda: ready(notifier), what="the notifier", within=30)
                bounced = await bounced_addresses(notifier, postmark, FLOOD)
                await postmark.put("/api/faults", json=SLOW_REACTIVATIONS)
                flood = ReactivationFlood(process.url, bounced)
                flood.start()
                await wait_until(
                    lambda: flood_under_way(postmark, flood), what="the flood", within=30
                )
                await register(api, email)

                async def sent_or_waiting() -> bool:
                    """Sent, or its attempt begun longer ago than any call may take."""
                    row = await db.fetchrow(
                        "SELECT status, now() - attempt_started_at AS open_for "
                        "FROM notifications WHERE recipient = $1",
                        email,
                    )
                    return row is not None and (
                        row["status"] != "pending"
                        or (row["open_for"] is not None and row["open_for"].total_seconds() > REACH)
                    )

                await wait_until(sent_or_waiting, what="the first attempt", within=30)
                suppressed_at = {email: await suppress(notifier, email)}

                async def settled() -> bool:
                    return not (await statuses(db, [email]))["pending"]

                await wait_until(settled, what="the email to settle", within=60)
                await flood.stop()  # the old pool runs what queued behind the reactivations
                await asyncio.sleep(1.0)  # a queued send would have been captured by now
                found = await verdict(db, postmark, [email], suppressed_at)
                final = await statuses(db, [email])
        finally:
            if process.alive:
                process.stop()

    with capsys.disabled():
        print(
            f"\n[one notifier, suppressed while queued] {found.line()}; {dict(final)}; "
            f"reactivations answered {dict(flood.answers)}"
        )
    assert found.duplicates == 0
    assert found.after_suppression == 0
    assert found.untrue == {}
    assert set(flood.answers) == {503}
