"""The claim statements of `notifier/store.py` on a real PostgreSQL: what the send-once
simulation's in-memory store assumes of them (tests/unit/test_send_once_simulation.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier.plans import PlannedEmail, SourceRecord, plan
from notifier.store import NotificationStore, Replay
from postroom import events
from postroom.db import create_engine
from postroom.erasure import erase_user
from postroom.outbox import OutboxWriter
from tests.support.names import unique
from tests.support.settings import make_api_settings, make_notifier_settings
from tests.support.stack import operator_api


def registration(email: str) -> tuple[PlannedEmail, SourceRecord]:
    user = uuid.uuid4()
    data = events.UserRegistered(
        user_id=user, version=1, email=email, name="Store", registered_at=datetime.now(UTC)
    )
    source = SourceRecord(
        topic="t.user",
        partition=0,
        offset=0,
        key=str(user),
        headers=(("ce_id", str(uuid.uuid4())), ("ce_type", data.event_type)),
        value=data.model_dump_json(),
    )
    [email_plan] = plan(source.event())
    return email_plan, source


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    created = create_engine(make_api_settings(database_url), application_name="store-test")
    try:
        yield created
    finally:
        await created.dispose()


REACH = 10.5  # POSTMARK_TIMEOUT 10 s and the start window


def store_of(
    engine: AsyncEngine, *, lease: float = 30.0, settle: float = 60.0, search_window: float = 3e6
) -> NotificationStore:
    return NotificationStore(
        engine,
        OutboxWriter(shards=8),
        lease=lease,
        settle=settle,
        reach=REACH,
        search_window=search_window,
    )


async def record(
    store: NotificationStore, *emails: str, claim: str = "first"
) -> list[PlannedEmail]:
    plans = [registration(email) for email in emails]
    claimed, suppressed = await store.record(
        [p for p, _ in plans],
        {p.event_id: s for p, s in plans},
        not_allowed={},
        attempt_id=uuid.uuid4().hex,
        claim=claim,
    )
    assert len(claimed) + len(suppressed) == len(emails)
    return [p for p, _ in plans]


async def expire_leases(db: asyncpg.Connection) -> None:
    await db.execute("UPDATE notifications SET lease_until = now() - interval '1 second'")


async def test_a_fresh_row_is_recorded_claimed_and_its_attempt_begun_at_once(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    store = store_of(engine)
    plans = [registration(f"{unique('fresh')}@example.com") for _ in range(3)]
    sources = {p.event_id: s for p, s in plans}

    claimed, suppressed = await store.record(
        [p for p, _ in plans], sources, not_allowed={}, attempt_id="a1", claim="first"
    )
    again, again_suppressed = await store.record(
        [p for p, _ in plans], sources, not_allowed={}, attempt_id="a2", claim="second"
    )
    rows = await db.fetch("SELECT * FROM notifications")

    assert sorted(row.id for row in claimed) == sorted(p.id for p, _ in plans)
    assert all(row.started and not row.in_doubt for row in claimed)
    assert (suppressed, again, again_suppressed) == ([], [], [])
    assert {
        (r["lease_owner"], r["attempt_id"], r["attempts"], r["attempt_open"]) for r in rows
    } == {("first", "a1", 1, True)}
    assert {SourceRecord.from_json(json.loads(r["source"])) for r in rows} == set(sources.values())


async def test_two_claimants_never_get_the_same_row(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    plans = await record(store_of(engine), *(f"{unique('race')}@example.com" for _ in range(40)))
    await expire_leases(db)
    ids = [p.id for p in plans]
    one, two = store_of(engine), store_of(engine)

    first, second = await asyncio.gather(one.claim(ids, claim="one"), two.claim(ids, claim="two"))

    got_one, got_two = {r.id for r in first}, {r.id for r in second}
    assert not got_one & got_two
    assert got_one | got_two == set(ids)


async def test_a_claim_lost_to_expiry_can_neither_begin_an_attempt_nor_release(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    store = store_of(engine)
    [p] = await record(store, f"{unique('expiry')}@example.com", claim="old")
    assert await store.claim([p.id], claim="other") == []  # held, and not expired

    await expire_leases(db)
    [taken] = await store.claim([p.id], claim="new")
    begun = await store.start_attempt({p.id: p.recipient}, "late", claim="old")
    await store.release({p.id: 0.0}, claim="old")
    row = await db.fetchrow("SELECT * FROM notifications WHERE id = $1", p.id)

    # The first attempt was still open when the row was claimed again: its outcome is unknown.
    assert (taken.in_doubt, taken.settled) == (True, False)
    assert begun == {}
    assert row is not None
    assert (row["lease_owner"], row["attempts"], row["attempt_open"]) == ("new", 1, False)
    # In doubt from the last instant that attempt's call could have reached Postmark.
    assert (row["doubt_since"] - row["attempt_started_at"]).total_seconds() == REACH


async def test_the_settle_window_counts_from_the_attempt_in_doubt(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    store = store_of(engine, settle=3600)
    [p] = await record(store, f"{unique('settle')}@example.com")
    await store.release({p.id: 0.0}, claim="first", ambiguous=True, error="timed out")

    [in_doubt] = await store.claim([p.id], claim="second")
    await store.wait_for_settle([p.id], claim="second")
    waiting = await store.claim([p.id], claim="third")
    due_at, doubt = await db.fetchrow(
        "SELECT next_attempt_at, doubt_since FROM notifications WHERE id = $1", p.id
    )
    # Two hours later (the clock moved by moving the row back):
    await db.execute(
        "UPDATE notifications SET doubt_since = now() - interval '2 hours', next_attempt_at = now()"
    )
    [settled] = await store.claim(None, claim="fourth")

    assert (in_doubt.in_doubt, in_doubt.settled) == (True, False)
    assert waiting == []
    assert (due_at - doubt).total_seconds() == pytest.approx(3600)
    assert (settled.id, settled.in_doubt, settled.settled) == (p.id, True, True)


async def test_a_definite_refusal_leaves_no_doubt_and_backs_off(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    store = store_of(engine)
    [p] = await record(store, f"{unique('throttled')}@example.com")
    await store.release({p.id: 30.0}, claim="first", error="429")

    row = await db.fetchrow("SELECT * FROM notifications WHERE id = $1", p.id)
    early = await store.claim([p.id], claim="second")

    assert row is not None
    assert (row["doubt_since"], row["attempt_open"], row["lease_owner"]) == (None, False, None)
    assert early == []  # due in 30 s
    assert 0 < (await store.due_in() or 0) <= 30


async def test_an_address_suppressed_after_the_claim_gets_no_attempt(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    store = store_of(engine)
    email = f"{unique('late')}@example.com"
    [p] = await record(store, email)
    await expire_leases(db)
    [claimed] = await store.claim([p.id], claim="second")
    await db.execute(
        "INSERT INTO suppressions (email, reason, origin) VALUES ($1, 'HardBounce', 'Postmark')",
        email.lower(),
    )

    held = await store.start_attempt({p.id: p.recipient}, "a2", claim="second")
    attempts = await db.fetchval("SELECT attempts FROM notifications WHERE id = $1", p.id)

    assert claimed.suppressed is None
    assert held == {p.id: "suppressed: HardBounce"}
    assert attempts == 1  # the recorded first attempt only


async def test_a_suppressed_address_is_recorded_suppressed_and_announced(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    email = f"{unique('blocked')}@example.com"
    await db.execute(
        "INSERT INTO suppressions (email, reason, origin) VALUES ($1, 'SpamComplaint', 'Postmark')",
        email.lower(),
    )
    store = store_of(engine)
    p, source = registration(email)

    claimed, suppressed = await store.record(
        [p], {p.event_id: source}, not_allowed={}, attempt_id="a1", claim="first"
    )
    row = await db.fetchrow("SELECT status, attempts, last_error FROM notifications")
    kinds = [r["event_type"] for r in await db.fetch("SELECT event_type FROM outbox")]

    assert claimed == []
    assert suppressed == [(p, "suppressed: SpamComplaint")]
    assert row is not None
    assert (row["status"], row["attempts"]) == ("suppressed", 0)
    assert kinds == ["email.suppressed"]


async def test_a_deleted_users_goodbye_erases_their_addresses_however_it_ends(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    """The goodbye to a suppressed address is recorded suppressed at once; that final status
    erases it and every other final notification of the user; one pending then (a welcome
    still retrying) is erased when it ends."""
    email = f"{unique('gone')}@example.com"
    store = store_of(engine)
    welcome, welcome_source = registration(email)
    await store.record(
        [welcome], {welcome.event_id: welcome_source}, not_allowed={}, attempt_id="a", claim="c"
    )
    await db.execute(
        "INSERT INTO suppressions (email, reason, origin) VALUES ($1, 'HardBounce', 'Postmark')",
        email.lower(),
    )
    data = events.UserDeleted(
        user_id=welcome.user_id, version=2, email=email, name="Gone", deleted_at=datetime.now(UTC)
    )
    source = SourceRecord(
        topic="t.user",
        partition=0,
        offset=1,
        key=str(welcome.user_id),
        headers=(("ce_id", str(uuid.uuid4())), ("ce_type", data.event_type)),
        value=data.model_dump_json(),
    )
    [goodbye] = plan(source.event())

    _, suppressed = await store.record(
        [goodbye], {goodbye.event_id: source}, not_allowed={}, attempt_id="b", claim="c"
    )
    pending_recipient = await db.fetchval(
        "SELECT recipient FROM notifications WHERE id = $1", welcome.id
    )
    await store.mark_failed([(welcome.id, f"ErrorCode 300: bad address {email}")])
    rows = {
        r["template"]: (r["recipient"], r["last_error"])
        for r in await db.fetch("SELECT template, recipient, last_error FROM notifications")
    }
    announced = [
        json.loads(r["payload"])["email"]
        for r in await db.fetch("SELECT payload::text FROM outbox ORDER BY id")
    ]

    assert [plan_.id for plan_, _ in suppressed] == [goodbye.id]
    assert pending_recipient == email  # still needed to send it
    assert rows["goodbye"][0] == ""
    assert rows["welcome"] == ("", "ErrorCode 300: bad address [erased]")
    assert announced == [email, email]  # the events still name the address


async def test_an_acceptance_is_never_dropped_and_one_that_came_late_is_recorded(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    """Postmark's answer is a fact: whatever the row says when it comes, the row ends sent.
    One that came when the row was final, or no longer its sender's, is recorded as late."""
    store = store_of(engine)
    ours, suppressed, failed, sent, taken = await record(
        store, *(f"{unique('late')}@example.com" for _ in range(5))
    )
    await store.mark_suppressed([(suppressed.id, "suppressed: HardBounce")])
    await store.mark_failed([(failed.id, "gave up after 6 attempts")])
    assert await store.mark_sent([(sent.id, "m-sent-first")], claim="first") == (1, [])
    await db.execute(
        "UPDATE notifications SET lease_until = now() - interval '1 second' WHERE id = $1",
        taken.id,
    )
    [reclaimed] = await store.claim([taken.id], claim="second")
    await db.execute("DELETE FROM outbox")

    moved, late = await store.mark_sent(
        [
            (ours.id, "m-ours"),
            (suppressed.id, "m-suppressed"),
            (failed.id, "m-failed"),
            (sent.id, "m-sent-again"),
            (taken.id, "m-taken"),
        ],
        claim="first",
    )
    again = await store.mark_sent([(sent.id, "m-sent-again"), (ours.id, "m-ours")], claim="first")
    begun = await store.start_attempt({taken.id: taken.recipient}, "a2", claim="second")
    rows = {
        r["id"]: r
        for r in await db.fetch(
            "SELECT id, status, message_id, late_message_ids, late_at, last_error, lease_owner "
            "FROM notifications"
        )
    }
    sent_events = [
        json.loads(r["payload"])["message_id"]
        for r in await db.fetch(
            "SELECT payload::text FROM outbox WHERE event_type = 'email.sent' ORDER BY id"
        )
    ]

    assert moved == 4  # all but the one sent already
    assert sorted((item.message_id, item.was) for item in late) == [
        ("m-failed", "failed"),
        ("m-sent-again", "sent"),
        ("m-suppressed", "suppressed"),
        ("m-taken", "pending"),
    ]
    assert again == (0, [])  # the same acceptance twice records nothing more
    assert reclaimed.in_doubt
    assert begun == {}  # the other claimant finds it sent: nothing more goes out
    assert {
        row_id: (r["status"], r["message_id"], r["late_message_ids"]) for row_id, r in rows.items()
    } == {
        ours.id: ("sent", "m-ours", []),
        suppressed.id: ("sent", "m-suppressed", ["m-suppressed"]),
        failed.id: ("sent", "m-failed", ["m-failed"]),
        sent.id: ("sent", "m-sent-first", ["m-sent-again"]),
        taken.id: ("sent", "m-taken", ["m-taken"]),
    }
    assert rows[ours.id]["late_at"] is None
    assert all(rows[p.id]["late_at"] is not None for p in (suppressed, failed, sent, taken))
    assert rows[taken.id]["lease_owner"] is None
    assert rows[suppressed.id]["last_error"] == (
        "accepted by Postmark after it was marked suppressed: suppressed: HardBounce"
    )
    assert sorted(sent_events) == ["m-failed", "m-ours", "m-suppressed", "m-taken"]


async def test_an_operator_sees_a_late_acceptance_on_the_notification(
    engine: AsyncEngine, database_url: str
) -> None:
    store = store_of(engine)
    [p] = await record(store, f"{unique('shown')}@example.com")
    await store.mark_suppressed([(p.id, "suppressed: HardBounce")])
    await store.mark_sent([(p.id, "m-late")], claim="first")
    settings = make_notifier_settings(database_url, "127.0.0.1:9", "http://127.0.0.1:9", "t")

    async with operator_api(settings) as notifier:
        shown = (await notifier.get(f"/v1/notifications/{p.id}")).json()
        listed = (await notifier.get("/v1/notifications", params={"status": "sent"})).json()

    assert (shown["status"], shown["message_id"], shown["late_message_ids"]) == (
        "sent",
        "m-late",
        ["m-late"],
    )
    assert shown["late_at"] is not None
    assert listed["items"] == [shown]


def deletion(user_id: uuid.UUID, email: str) -> tuple[PlannedEmail, SourceRecord]:
    data = events.UserDeleted(
        user_id=user_id, version=2, email=email, name="Gone", deleted_at=datetime.now(UTC)
    )
    source = SourceRecord(
        topic="t.user",
        partition=0,
        offset=1,
        key=str(user_id),
        headers=(("ce_id", str(uuid.uuid4())), ("ce_type", data.event_type)),
        value=data.model_dump_json(),
    )
    [goodbye] = plan(source.event())
    return goodbye, source


async def announced(db: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """The `email.*` events written so far: (type, address, reason)."""
    return [
        (r["event_type"], r["data"]["email"], r["data"].get("reason", ""))
        for r in await db.fetch("SELECT event_type, payload AS data FROM outbox ORDER BY id")
    ]


@pytest.fixture
async def json_db(db: asyncpg.Connection) -> asyncpg.Connection:
    await db.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return db


async def test_nothing_of_a_deleted_user_but_the_goodbye_is_recorded_claimed_or_begun(
    engine: AsyncEngine, json_db: asyncpg.Connection
) -> None:
    """Deleted (the api's erasure, in the deletion's transaction) while their welcome is
    pending: the welcome's claim says so and no attempt begins; a record read late asks for
    more (recorded settled, no address kept or announced); the goodbye still goes."""
    db = json_db
    store = store_of(engine)
    email = f"{unique('erased')}@example.com"
    [welcome] = await record(store, email)
    assert welcome.user_id is not None
    await erase_user(db, user_id=welcome.user_id, email=email)
    await expire_leases(db)
    [claimed] = await store.claim([welcome.id], claim="retry")
    begun = await store.start_attempt({welcome.id: email}, "a2", claim="retry")

    # A record for the same user read after the deletion (a redelivery, a late read).
    late, late_source = registration(email)
    late = replace(late, user_id=welcome.user_id)
    claimed_late, settled = await store.record(
        [late], {late.event_id: late_source}, not_allowed={}, attempt_id="b", claim="c"
    )
    goodbye, goodbye_source = deletion(welcome.user_id, email)
    claimed_goodbye, _ = await store.record(
        [goodbye], {goodbye.event_id: goodbye_source}, not_allowed={}, attempt_id="g", claim="c"
    )
    await store.mark_suppressed([(welcome.id, "user deleted")])
    rows = {
        r["id"]: r
        for r in await db.fetch(
            "SELECT id, status, recipient, source, last_error FROM notifications"
        )
    }

    assert claimed.erased
    assert begun == {welcome.id: "user deleted"}
    assert claimed_late == []
    assert settled == [(late, "user deleted")]
    assert [row.id for row in claimed_goodbye] == [goodbye.id]  # begun: it is sent
    for row_id in (welcome.id, late.id):
        assert (rows[row_id]["status"], rows[row_id]["recipient"]) == ("suppressed", "")
        assert (rows[row_id]["source"], rows[row_id]["last_error"]) == (None, "user deleted")
    assert rows[goodbye.id]["recipient"] == email  # needed to send it
    assert await announced(db) == [
        ("email.suppressed", "", "user deleted"),
        ("email.suppressed", "", "user deleted"),
    ]


async def test_a_replayed_failure_of_a_deleted_user_stays_failed_and_its_goodbye_is_reopened(
    engine: AsyncEngine, json_db: asyncpg.Connection
) -> None:
    db = json_db
    store = store_of(engine)
    email, other = f"{unique('gone')}@example.com", f"{unique('kept')}@example.com"
    welcome, welcome_source = registration(email)
    kept, kept_source = registration(other)
    assert welcome.user_id is not None
    goodbye, goodbye_source = deletion(welcome.user_id, email)
    sources = {
        welcome.event_id: welcome_source,
        kept.event_id: kept_source,
        goodbye.event_id: goodbye_source,
    }
    await store.record([welcome, kept], sources, not_allowed={}, attempt_id="a", claim="c")
    # Postmark down: both given up. The user is deleted; their goodbye fails too.
    await store.mark_failed([(welcome.id, "gave up"), (kept.id, "gave up")])
    await erase_user(db, user_id=welcome.user_id, email=email)
    await store.record([goodbye], sources, not_allowed={}, attempt_id="g", claim="c")
    await store.mark_failed([(goodbye.id, "gave up")])
    await db.execute("DELETE FROM outbox")

    replayed = {p.id: await store.replay_failed(p.id) for p in (welcome, kept, goodbye)}
    again = await store.replay_failed(welcome.id)  # --from-beginning
    await store.keep_sources({welcome.id: welcome_source})  # the record, read again anyway
    rows = {
        r["id"]: r
        for r in await db.fetch(
            "SELECT id, status, recipient, source, last_error FROM notifications"
        )
    }

    assert replayed == {
        welcome.id: Replay.ERASED,
        kept.id: Replay.REOPENED,
        goodbye.id: Replay.REOPENED,
    }
    assert again is Replay.ERASED
    assert (rows[welcome.id]["status"], rows[welcome.id]["last_error"]) == ("failed", "gave up")
    assert (rows[welcome.id]["recipient"], rows[welcome.id]["source"]) == ("", None)
    assert (rows[kept.id]["status"], rows[goodbye.id]["status"]) == ("pending", "pending")
    assert await announced(db) == []  # nothing about the deleted user's email


async def test_a_replay_leaves_an_email_still_in_flight_and_skips_one_sent_since(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    """A dead letter is written before its row is marked failed: a replay in between finds
    the row pending and leaves the letter for a later replay; once the row was sent (an
    earlier replay worked), the letter is skipped."""
    store = store_of(engine)
    [welcome] = await record(store, f"{unique('inflight')}@example.com")

    while_pending = await store.replay_failed(welcome.id)
    await store.mark_failed([(welcome.id, "gave up")])
    once_failed = await store.replay_failed(welcome.id)
    status_after = await db.fetchval("SELECT status FROM notifications WHERE id = $1", welcome.id)
    await db.execute("UPDATE notifications SET status = 'sent' WHERE id = $1", welcome.id)
    once_sent = await store.replay_failed(welcome.id)
    never_recorded = await store.replay_failed(uuid.uuid4())

    assert (while_pending, while_pending.done) == (Replay.PENDING, False)
    assert (once_failed, status_after) == (Replay.REOPENED, "pending")
    assert (once_sent, once_sent.puts_back) == (Replay.SETTLED, False)
    assert (never_recorded, never_recorded.puts_back) == (Replay.UNKNOWN, True)


async def test_an_attempt_begins_only_if_the_address_it_will_be_sent_to_is_not_suppressed(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    """A replayed goodbye's stored address was erased; the one planned again from its record
    is what the last look reads."""
    store = store_of(engine)
    email = f"{unique('replayed')}@example.com"
    goodbye, source = deletion(uuid.uuid4(), email)
    await store.record(
        [goodbye], {goodbye.event_id: source}, not_allowed={}, attempt_id="a", claim="c"
    )
    await store.mark_failed([(goodbye.id, "gave up")])
    assert await db.fetchval("SELECT recipient FROM notifications") == ""
    await store.replay_failed(goodbye.id)
    await db.execute(
        "INSERT INTO suppressions (email, reason, origin) VALUES ($1, 'HardBounce', 'Postmark')",
        email.lower(),
    )
    await store.keep_sources({goodbye.id: source})
    [claimed] = await store.claim(claim="sweep")

    held = await store.start_attempt({goodbye.id: goodbye.recipient}, "a2", claim="sweep")

    assert claimed.suppressed is None  # the stored column is blank
    assert held == {goodbye.id: "suppressed: HardBounce"}


async def test_a_row_in_doubt_older_than_postmark_keeps_messages_is_not_searchable(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    store = store_of(engine, search_window=44 * 86400)
    old, recent = await record(
        store, f"{unique('old')}@example.com", f"{unique('recent')}@example.com"
    )
    await store.release({old.id: 0.0, recent.id: 0.0}, claim="first", ambiguous=True)
    await db.execute(
        "UPDATE notifications SET created_at = now() - interval '50 days', "
        "doubt_since = now() - interval '50 days' WHERE id = $1",
        old.id,
    )
    await db.execute("UPDATE notifications SET doubt_since = now() - interval '1 hour'")

    claimed = {row.id: row for row in await store.claim(claim="sweep")}

    assert (claimed[old.id].in_doubt, claimed[old.id].searchable) == (True, False)
    assert (claimed[recent.id].in_doubt, claimed[recent.id].searchable) == (True, True)


async def test_a_406_for_a_deleted_users_email_still_suppresses_the_address_unnamed(
    engine: AsyncEngine, json_db: asyncpg.Connection
) -> None:
    """The attempt began before the deletion; Postmark's 406 arrives after it: the address
    goes on the suppression list (kept for deleted users too), the event names no address."""
    db = json_db
    store = store_of(engine)
    email = f"{unique('inactive')}@example.com"
    [welcome] = await record(store, email)
    assert welcome.user_id is not None
    await erase_user(db, user_id=welcome.user_id, email=email)

    await store.mark_suppressed(
        [(welcome.id, f"inactive at Postmark: {email} is inactive")], inactive_at_postmark=True
    )
    row = await db.fetchrow("SELECT recipient, last_error FROM notifications")
    reason = await db.fetchval("SELECT reason FROM suppressions WHERE email = $1", email)

    assert row is not None
    assert (row["recipient"], row["last_error"]) == (
        "",
        "inactive at Postmark: [erased] is inactive",
    )
    assert reason == "InactiveRecipient"
    assert await announced(db) == [
        ("email.suppressed", "", "inactive at Postmark: [erased] is inactive")
    ]
