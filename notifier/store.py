"""The notifications table as the send-once state machine sees it: every transaction that
moves a notification, each in one place (invariants 6 and 7).

A notification is worked on only under a claim: `lease_owner` and `lease_until`. A claim is
taken in one statement that returns the rows it got, and it is only ever taken on a pending
row whose lease is free (never held, or expired) and that is due (`next_attempt_at`). The
same statement reads the suppression list, so an address suppressed before the claim is
never mailed by it. The list is read by the row's `recipient_key`, the address key computed
when the row was recorded (invariant 10): never by folding the address in SQL.

A send attempt is recorded before Postmark is called (`attempt_open`, `attempt_started_at`,
a fresh `attempt_id`), and only by the holder of a live claim. Its outcome closes it. An
attempt found still open when a row is claimed again was cut short (its sender died or lost
its claim): its outcome is unknown, like a timeout's. `doubt_since` records the last instant
an attempt in doubt could have reached Postmark: its start + `reach` (its call starts within
a window of the stamp and has a total deadline, `notifier/postmark.py`). Postmark is
searched before any resend of a row in doubt, and "not found" counts only once `settle`
seconds (the search's lag) have passed since `doubt_since`, and only while Postmark still
keeps every message the row's attempts may have left (`search_window` seconds since its
first).

An acceptance is a fact: whatever the row says when Postmark's answer comes, the row ends
`sent`. One that comes when the row is no longer pending under the sender's claim (final
already, or claimed by another) is also recorded as late (`late_message_ids`, `late_at`).

Erased means never (invariant 10): a row of a deleted user (`erased_users`) other than their
goodbye is never sent. The statements that record, claim and begin an attempt read the
tombstone, and such a row is settled as suppressed, "user deleted", with no address left in
it or in its event.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notifier import suppressions as suppression_list
from notifier.plans import PlannedEmail, SourceRecord
from postroom import events
from postroom.addresses import address_key
from postroom.outbox import OutboxWriter

MAX_ERROR = 2000
# Why an email for a deleted user is not sent.
USER_DELETED = "user deleted"


# The notification `{n}` (an alias) is for a deleted user and is not their goodbye.
_ERASED = """({n}.event_type <> 'user.deleted' AND EXISTS (
        SELECT 1 FROM erased_users AS e WHERE e.user_id = {n}.user_id))"""


def _erased(n: str) -> str:
    return _ERASED.format(n=n)


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """A pending notification this process now holds the claim on."""

    id: uuid.UUID
    source: SourceRecord | None
    attempts: int
    # An earlier attempt's outcome is unknown: search Postmark before sending.
    in_doubt: bool
    # ...and enough time has passed since it began for "not found" to mean "not sent".
    settled: bool
    # The address's suppression reason, read by the claiming statement; None if not suppressed.
    suppressed: str | None
    last_error: str | None = None
    # The claim also began a send attempt (a fresh row, recorded and claimed in one go).
    started: bool = False
    # Its user has been deleted, and it is not their goodbye: it is never sent.
    erased: bool = False
    # Postmark still keeps any message its attempts may have left, so a search can tell.
    searchable: bool = True


class _Fields(Protocol):
    """What an `email.*` event says of its notification: a planned email or a moved row."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def event_id(self) -> uuid.UUID: ...
    @property
    def user_id(self) -> uuid.UUID | None: ...
    @property
    def template(self) -> str: ...
    @property
    def recipient(self) -> str: ...


class Replay(enum.Enum):
    """What replaying a dead letter found its notification to be, and so what becomes of
    the letter."""

    REOPENED = "reopened"  # it was failed: pending again, and its record goes back
    UNKNOWN = "unknown"  # no such row (never recorded): its record goes back, to be planned
    ERASED = "erased"  # its user was deleted: it stays failed, its record is held back
    SETTLED = "settled"  # sent or settled since: nothing to do
    PENDING = "pending"  # still being worked on: left for a later replay

    @property
    def puts_back(self) -> bool:
        return self in (Replay.REOPENED, Replay.UNKNOWN)

    @property
    def done(self) -> bool:
        """Whether the letter is dealt with for good (a replay may move past it)."""
        return self is not Replay.PENDING


@dataclass(frozen=True, slots=True)
class LateAcceptance:
    """Postmark accepted a message for a row that was no longer pending under the sender's
    claim: `was` is the row's status then (a final one, or pending under another claim)."""

    id: uuid.UUID
    message_id: str
    was: str


@dataclass(frozen=True, slots=True)
class _Finished:
    id: uuid.UUID
    event_id: uuid.UUID
    user_id: uuid.UUID | None
    template: str
    recipient: str
    reason: str | None
    event_type: str = ""
    # The address it was for, even when its event may not name it (a deleted user's).
    address: str = ""


async def _erase_after_goodbyes(conn: AsyncConnection, moved: Sequence[Any]) -> None:
    users = {row.user_id for row in moved if row.event_type == "user.deleted" and row.user_id}
    if users:
        await conn.execute(_ERASE_FINISHED, {"users": list(users)})


def _event_fields(row: _Fields) -> dict[str, Any]:
    return {
        "notification_id": row.id,
        "email": row.recipient,
        "template": row.template,
        "user_id": row.user_id,
        "source_event_id": row.event_id,
    }


# Fresh rows are recorded and claimed in one statement, their first attempt begun; rows the
# suppression list or the staging allowlist blocks are recorded as suppressed instead.
_RECORD_SQL = """
    INSERT INTO notifications AS n (
        id, event_id, event_type, user_id, template, recipient, recipient_key, source, status,
        last_error, attempts, attempt_id, attempt_started_at, attempt_open, lease_owner,
        lease_until, next_attempt_at)
    SELECT v.id, v.event_id, v.event_type, v.user_id, v.template,
           CASE WHEN gone.erased OR (blocked.reason IS NOT NULL AND v.event_type = 'user.deleted')
                THEN '' ELSE v.recipient END,
           CASE WHEN gone.erased OR (blocked.reason IS NOT NULL AND v.event_type = 'user.deleted')
                THEN '' ELSE v.recipient_key END,
           CASE WHEN blocked.reason IS NULL THEN CAST(v.source AS jsonb) END,
           CASE WHEN blocked.reason IS NULL THEN 'pending' ELSE 'suppressed' END,
           blocked.reason,
           CASE WHEN blocked.reason IS NULL THEN 1 ELSE 0 END,
           CASE WHEN blocked.reason IS NULL THEN :attempt_id END,
           CASE WHEN blocked.reason IS NULL THEN now() END,
           blocked.reason IS NULL,
           CASE WHEN blocked.reason IS NULL THEN :owner END,
           CASE WHEN blocked.reason IS NULL THEN now() + make_interval(secs => :lease) END,
           now()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:event_ids AS uuid[]), CAST(:event_types AS text[]),
                CAST(:user_ids AS uuid[]), CAST(:templates AS text[]),
                CAST(:recipients AS text[]), CAST(:recipient_keys AS text[]),
                CAST(:sources AS text[]), CAST(:not_allowed AS text[]))
         AS v(id, event_id, event_type, user_id, template, recipient, recipient_key, source,
              not_allowed)
    LEFT JOIN suppressions AS s ON s.email = v.recipient_key
    CROSS JOIN LATERAL (SELECT {erased} AS erased) AS gone
    CROSS JOIN LATERAL (
        SELECT COALESCE(CASE WHEN gone.erased THEN CAST(:user_deleted AS text) END,
                        v.not_allowed, 'suppressed: ' || s.reason) AS reason
    ) AS blocked
    ON CONFLICT (id) DO NOTHING
    RETURNING n.id, n.status, n.last_error
    """
_RECORD = sa.text(_RECORD_SQL.format(erased=_erased("v")))

_CLAIM = """
    UPDATE notifications AS n
    SET lease_owner = :owner,
        lease_until = now() + make_interval(secs => :lease),
        doubt_since = CASE WHEN n.attempt_open
                           THEN n.attempt_started_at + make_interval(secs => :reach)
                           ELSE n.doubt_since END,
        attempt_open = false,
        updated_at = now()
    FROM (
        SELECT id FROM notifications
        WHERE {which} AND status = 'pending' AND next_attempt_at <= now()
          AND (lease_until IS NULL OR lease_until < now())
        ORDER BY next_attempt_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) AS free
    WHERE n.id = free.id
    RETURNING n.id, CAST(n.source AS text) AS source, n.attempts,
              n.doubt_since IS NOT NULL AS in_doubt,
              n.doubt_since IS NULL
                  OR n.doubt_since + make_interval(secs => :settle) <= now() AS settled,
              (SELECT s.reason FROM suppressions AS s WHERE s.email = n.recipient_key)
                  AS suppressed,
              n.last_error,
              {erased} AS erased,
              n.created_at + make_interval(secs => :search_window) > now() AS searchable
    """
_CLAIM_IDS = sa.text(_CLAIM.format(which="id = ANY(CAST(:ids AS uuid[]))", erased=_erased("n")))
# Rows recorded before their source was kept are left to the Kafka record that asked for them.
_CLAIM_DUE = sa.text(_CLAIM.format(which="source IS NOT NULL", erased=_erased("n")))

# Begin an attempt on the rows a claim still holds whose user is not deleted and whose address,
# the one the send will go to (planned again from the record: a replayed row's stored one may
# be erased), is not suppressed, read here, the last look before the send; the others come
# back with the reason they may not be sent.
_START_SQL = """
    WITH held AS (
        SELECT n.id,
               CASE WHEN {erased} THEN CAST(:user_deleted AS text)
                    ELSE 'suppressed: ' || (SELECT s.reason FROM suppressions AS s
                                            WHERE s.email = v.recipient_key)
               END AS blocked
        FROM notifications AS n
        JOIN unnest(CAST(:ids AS uuid[]), CAST(:recipient_keys AS text[]))
             AS v(id, recipient_key)
          ON v.id = n.id
        WHERE n.status = 'pending' AND n.lease_owner = :owner AND n.lease_until > now()
        FOR UPDATE OF n
    ), started AS (
        UPDATE notifications AS n
        SET attempts = n.attempts + 1, attempt_id = :attempt_id, attempt_started_at = now(),
            attempt_open = true, lease_until = now() + make_interval(secs => :lease),
            updated_at = now()
        FROM held
        WHERE n.id = held.id AND held.blocked IS NULL
        RETURNING n.id
    )
    SELECT held.id, held.blocked FROM held
    """
_START = sa.text(_START_SQL.format(erased=_erased("n")))

# A final status erases the recipient of a deleted user's row: the goodbye's `email.*` event
# still names the address (the one read before the update), another row's names none; the
# table keeps only ids.
_FINAL = """
    UPDATE notifications AS n
    SET {values}, attempt_open = false, lease_owner = NULL, lease_until = NULL,
        source = NULL, updated_at = now(),
        recipient = CASE WHEN before.gone THEN '' ELSE n.recipient END,
        recipient_key = CASE WHEN before.gone THEN '' ELSE n.recipient_key END
    FROM unnest(CAST(:ids AS uuid[]), CAST(:{detail} AS text[])) AS v(id, detail),
         LATERAL (SELECT b.recipient, {gone} AS gone, {erased} AS erased
                  FROM notifications AS b WHERE b.id = v.id) AS before
    WHERE n.id = v.id AND n.status = 'pending'{held}
    RETURNING n.id, n.event_id, n.event_type, n.user_id, n.template,
              CASE WHEN before.erased THEN '' ELSE before.recipient END AS recipient,
              before.recipient AS address, {returned}
    """

# The user is deleted: this is the goodbye, the user is erased, or their goodbye is final. Read
# once per row (its event type and user never change), where a statement first reads the row.
_GONE = """({n}.event_type = 'user.deleted'
    OR EXISTS (SELECT 1 FROM erased_users AS e WHERE e.user_id = {n}.user_id)
    OR EXISTS (
        SELECT 1 FROM notifications AS g
        WHERE g.user_id = {n}.user_id AND g.event_type = 'user.deleted'
          AND g.status <> 'pending'))"""


def _gone(n: str) -> str:
    return _GONE.format(n=n)


_MARK_SENT = sa.text(
    _FINAL.format(
        gone=_gone("b"),
        erased=_erased("b"),
        values="status = 'sent', message_id = v.detail, sent_at = now(), last_error = NULL",
        detail="mids",
        returned="n.message_id",
        # Under the sender's claim; any other acceptance is late (_MARK_LATE).
        held=" AND n.lease_owner = :owner",
    )
)

# Acceptances that came when their row was no longer pending under the sender's claim (final
# already, or claimed by another since): each MessageID is recorded on its row once. A row
# not sent yet becomes sent (the earlier outcome stays in its error); a sent row keeps its
# first MessageID.
_LATE = """
    WITH locked AS (
        SELECT l.id, l.status, l.lease_owner, l.message_id, l.late_message_ids, l.recipient,
               {gone} AS gone, {erased} AS erased
        FROM notifications AS l
        WHERE l.id = ANY(CAST(:ids AS uuid[]))
        ORDER BY l.id
        FOR UPDATE
    ), late AS (
        SELECT locked.id, v.mid, locked.status AS was, locked.recipient, locked.gone,
               locked.erased,
               locked.status IN ('pending', 'suppressed', 'failed') AS moves
        FROM locked
        JOIN unnest(CAST(:ids AS uuid[]), CAST(:mids AS text[])) AS v(id, mid)
          ON v.id = locked.id
        WHERE NOT (locked.status = 'pending' AND locked.lease_owner = :owner)
          AND locked.message_id IS DISTINCT FROM v.mid
          AND NOT v.mid = ANY(locked.late_message_ids)
    )
    UPDATE notifications AS n
    SET late_message_ids = n.late_message_ids || late.mid, late_at = now(),
        status = CASE WHEN late.moves THEN 'sent' ELSE n.status END,
        message_id = CASE WHEN late.moves THEN late.mid ELSE n.message_id END,
        sent_at = CASE WHEN late.moves THEN now() ELSE n.sent_at END,
        last_error = CASE
            WHEN late.was = 'pending' THEN NULL
            WHEN late.moves THEN 'accepted by Postmark after it was marked ' || late.was
                                 || COALESCE(': ' || n.last_error, '')
            ELSE n.last_error END,
        attempt_open = n.attempt_open AND NOT late.moves,
        lease_owner = CASE WHEN late.moves THEN NULL ELSE n.lease_owner END,
        lease_until = CASE WHEN late.moves THEN NULL ELSE n.lease_until END,
        source = CASE WHEN late.moves THEN NULL ELSE n.source END,
        recipient = CASE WHEN late.moves AND late.gone THEN '' ELSE n.recipient END,
        recipient_key = CASE WHEN late.moves AND late.gone THEN '' ELSE n.recipient_key END,
        updated_at = now()
    FROM late
    WHERE n.id = late.id
    RETURNING n.id, n.event_id, n.event_type, n.user_id, n.template,
              CASE WHEN late.erased THEN '' ELSE late.recipient END AS recipient,
              n.message_id, late.mid, late.was, late.moves
    """
_MARK_LATE = sa.text(_LATE.format(gone=_gone("l"), erased=_erased("l")))

_FINISH = sa.text(
    _FINAL.format(
        gone=_gone("b"),
        erased=_erased("b"),
        # Its error (Postmark's 406 names the address) loses the address too.
        values="status = :status, last_error = CASE WHEN before.gone "
        "THEN replace(v.detail, before.recipient, '[erased]') ELSE v.detail END",
        detail="errors",
        returned="n.last_error",
        held="",
    )
)

# Once a deleted user's goodbye is final, what else of theirs is final loses its recipient
# too (an email still pending at the deletion, finished since).
_ERASE_FINISHED = sa.text(
    """
    UPDATE notifications
    SET recipient = '', recipient_key = '', source = NULL,
        last_error = replace(last_error, recipient, '[erased]')
    WHERE user_id = ANY(CAST(:users AS uuid[])) AND status <> 'pending' AND recipient <> ''
    """
)

# Hand a claimed row back, due again after its delay (or, `settle`, when its settle window
# ends). `ambiguous`: the attempt that just ended may have been accepted.
_RELEASE = sa.text(
    """
    UPDATE notifications AS n
    SET lease_owner = NULL, lease_until = NULL,
        doubt_since = CASE WHEN :ambiguous AND n.attempt_open
                           THEN n.attempt_started_at + make_interval(secs => :reach)
                           ELSE n.doubt_since END,
        attempt_open = false,
        attempts = n.attempts + :count_attempt,
        next_attempt_at = CASE
            WHEN CAST(:settle AS float8) IS NULL THEN now() + make_interval(secs => v.delay)
            ELSE GREATEST(now(), n.doubt_since + make_interval(secs => CAST(:settle AS float8)))
        END,
        last_error = COALESCE(CAST(:error AS text), n.last_error),
        updated_at = now()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:delays AS float8[])) AS v(id, delay)
    WHERE n.id = v.id AND n.status = 'pending' AND n.lease_owner = :owner
    """
)

# Only on pending rows: a final row's source is gone for good (an erased one's with it).
_KEEP_SOURCES = sa.text(
    """
    UPDATE notifications AS n SET source = CAST(v.source AS jsonb)
    FROM unnest(CAST(:ids AS uuid[]), CAST(:sources AS text[])) AS v(id, source)
    WHERE n.id = v.id AND n.source IS NULL AND n.status = 'pending'
    """
)

# A replayed dead letter's notification. Failed, it goes back to pending, due at once, its
# attempts reset and its doubt kept; failed and its user deleted, it is settled instead.
_REPLAYED_SQL = """
    SELECT n.status, {erased} AS erased FROM notifications AS n WHERE n.id = :id FOR UPDATE
    """
_REPLAYED = sa.text(_REPLAYED_SQL.format(erased=_erased("n")))
_REOPEN = sa.text(
    """
    UPDATE notifications
    SET status = 'pending', attempts = 0, lease_owner = NULL, lease_until = NULL,
        next_attempt_at = now(), updated_at = now()
    WHERE id = :id
    """
)

_DUE_IN = sa.text(
    """
    SELECT EXTRACT(EPOCH FROM min(GREATEST(next_attempt_at, COALESCE(lease_until, now()))) - now())
    FROM notifications WHERE status = 'pending' AND source IS NOT NULL
    """
)


class NotificationStore:
    """The send-once state machine's transactions on PostgreSQL, for one claimant."""

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: OutboxWriter,
        *,
        lease: float,
        settle: float,
        reach: float,
        search_window: float,
    ) -> None:
        self.engine = engine
        self.outbox = outbox
        self.lease = lease
        self.settle = settle
        # How long after its stamp an attempt's call may still reach Postmark.
        self.reach = reach
        # How long after a row's first attempt Postmark's search still shows what it sent.
        self.search_window = search_window
        # Called whenever rows are handed back to wait (or become retryable): the retry loop
        # looks at its clock again.
        self.on_hand_back: Callable[[], None] = lambda: None

    async def record(
        self,
        planned: Sequence[PlannedEmail],
        sources: dict[uuid.UUID, SourceRecord],
        *,
        not_allowed: dict[uuid.UUID, str],
        attempt_id: str,
        claim: str,
    ) -> tuple[list[ClaimedRow], list[tuple[PlannedEmail, str]]]:
        """Record planned emails not seen before, claiming each one that may be sent with its
        first attempt begun. Returns the claimed rows and the (email, reason) of those
        recorded as suppressed; emails recorded earlier are in neither."""
        if not planned:
            return [], []
        by_id = {plan.id: plan for plan in planned}
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    _RECORD,
                    {
                        "ids": [p.id for p in planned],
                        "event_ids": [p.event_id for p in planned],
                        "event_types": [p.event_type for p in planned],
                        "user_ids": [p.user_id for p in planned],
                        "templates": [p.template for p in planned],
                        "recipients": [p.recipient for p in planned],
                        "recipient_keys": [address_key(p.recipient) for p in planned],
                        "sources": [json.dumps(sources[p.event_id].as_json()) for p in planned],
                        "not_allowed": [not_allowed.get(p.id) for p in planned],
                        "attempt_id": attempt_id,
                        "owner": claim,
                        "lease": self.lease,
                        "user_deleted": USER_DELETED,
                    },
                )
            ).all()
            suppressed = [(by_id[r.id], r.last_error) for r in rows if r.status == "suppressed"]
            finished = [
                _Finished(
                    p.id,
                    p.event_id,
                    p.user_id,
                    p.template,
                    "" if reason == USER_DELETED else p.recipient,
                    reason,
                    p.event_type,
                )
                for p, reason in suppressed
            ]
            await self._announce_suppressed(conn, finished)
            await _erase_after_goodbyes(conn, finished)
        claimed = [
            ClaimedRow(
                id=r.id,
                source=sources[by_id[r.id].event_id],
                attempts=1,
                in_doubt=False,
                settled=True,
                suppressed=None,
                started=True,
            )
            for r in rows
            if r.status == "pending"
        ]
        return claimed, suppressed

    async def claim(
        self, ids: Sequence[uuid.UUID] | None = None, *, claim: str, limit: int = 500
    ) -> list[ClaimedRow]:
        """Claim, under the name `claim`, pending rows that are due and free: those of `ids`,
        or else the longest due that carry their source record."""
        statement = _CLAIM_DUE if ids is None else _CLAIM_IDS
        params: dict[str, Any] = {
            "owner": claim,
            "lease": self.lease,
            "settle": self.settle,
            "reach": self.reach,
            "search_window": self.search_window,
            "limit": limit,
        }
        if ids is not None:
            if not ids:
                return []
            params["ids"] = list(ids)
        async with self.engine.begin() as conn:
            rows = (await conn.execute(statement, params)).all()
        return [
            ClaimedRow(
                id=r.id,
                source=SourceRecord.from_json(json.loads(r.source)) if r.source else None,
                attempts=r.attempts,
                in_doubt=r.in_doubt,
                settled=r.settled,
                suppressed=r.suppressed,
                last_error=r.last_error,
                erased=r.erased,
                searchable=r.searchable,
            )
            for r in rows
        ]

    async def start_attempt(
        self, recipients: dict[uuid.UUID, str], attempt_id: str, *, claim: str
    ) -> dict[uuid.UUID, str | None]:
        """Record a send attempt on the rows `claim` still holds, each given with the address
        it is about to be sent to. Returns those rows, each with None (begun: send it) or the
        reason it may not be sent now (not begun): its user deleted, its address suppressed."""
        if not recipients:
            return {}
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                _START,
                {
                    "ids": list(recipients),
                    "recipient_keys": [address_key(r) for r in recipients.values()],
                    "attempt_id": attempt_id,
                    "owner": claim,
                    "lease": self.lease,
                    "user_deleted": USER_DELETED,
                },
            )
            return {row.id: row.blocked for row in rows}

    async def mark_sent(
        self, accepted: Sequence[tuple[uuid.UUID, str]], *, claim: str
    ) -> tuple[int, list[LateAcceptance]]:
        """Postmark holds these messages (notification id, MessageID), sent under `claim`:
        mark them sent, each with its `email.sent` event. Returns how many became sent and
        the acceptances that came late (the row final already, or no longer claimed by
        `claim`), which are recorded on their rows too."""
        if not accepted:
            return 0, []
        async with self.engine.begin() as conn:
            moved: list[Any] = list(
                (
                    await conn.execute(
                        _MARK_SENT,
                        {
                            "ids": [i for i, _ in accepted],
                            "mids": [mid for _, mid in accepted],
                            "owner": claim,
                        },
                    )
                ).all()
            )
            done = {row.id for row in moved}
            rest = [(i, mid) for i, mid in accepted if i not in done]
            late: Sequence[Any] = ()
            if rest:  # final already, or claimed by another since
                late = (
                    await conn.execute(
                        _MARK_LATE,
                        {
                            "ids": [i for i, _ in rest],
                            "mids": [mid for _, mid in rest],
                            "owner": claim,
                        },
                    )
                ).all()
                moved += [row for row in late if row.moves]
            await self.outbox.add_many(
                conn,
                [
                    events.Event(
                        events.EmailSent(**_event_fields(row), message_id=row.message_id),
                        source=events.SOURCE_NOTIFIER,
                    )
                    for row in moved
                ],
            )
            await _erase_after_goodbyes(conn, moved)
        return len(moved), [LateAcceptance(row.id, row.mid, row.was) for row in late]

    async def mark_suppressed(
        self, blocked: Sequence[tuple[uuid.UUID, str]], *, inactive_at_postmark: bool = False
    ) -> int:
        """Not sent, and never will be (notification id, reason): a suppressed address, the
        staging allowlist, or Postmark's 406 (`inactive_at_postmark`, which also suppresses
        the address)."""
        if not blocked:
            return 0
        async with self.engine.begin() as conn:
            moved = await self._finish(conn, "suppressed", blocked)
            if inactive_at_postmark:
                for row in moved:
                    await suppression_list.note_inactive(
                        conn, row.address, details=row.reason or ""
                    )
            await self._announce_suppressed(conn, moved)
            await _erase_after_goodbyes(conn, moved)
        return len(moved)

    async def mark_failed(self, failed: Sequence[tuple[uuid.UUID, str]]) -> int:
        """Refused for good, or given up (notification id, reason): `failed`, each with its
        `email.failed` event."""
        if not failed:
            return 0
        async with self.engine.begin() as conn:
            moved = await self._finish(conn, "failed", failed)
            await self.outbox.add_many(
                conn,
                [
                    events.Event(
                        events.EmailFailed(**_event_fields(row), error=row.reason),
                        source=events.SOURCE_NOTIFIER,
                    )
                    for row in moved
                ],
            )
            await _erase_after_goodbyes(conn, moved)
        return len(moved)

    async def release(
        self,
        delays: dict[uuid.UUID, float],
        *,
        claim: str,
        ambiguous: bool = False,
        count_attempt: bool = False,
        error: str | None = None,
    ) -> None:
        """Hand rows `claim` holds back, each due again after its delay in seconds.
        `ambiguous`: the attempt that just ended may have been accepted (a timeout, a reset,
        a 5xx). `count_attempt`: what failed counts toward the attempts (a failed search)."""
        await self._release(
            delays, claim=claim, ambiguous=ambiguous, count=count_attempt, error=error
        )

    async def wait_for_settle(self, ids: Sequence[uuid.UUID], *, claim: str) -> None:
        """Hand rows in doubt back until their settle window has passed."""
        await self._release(dict.fromkeys(ids, 0.0), claim=claim, settle=True)

    async def replay_failed(self, notification: uuid.UUID) -> Replay:
        """A dead letter of `notification` is being replayed: a failed row goes back to
        pending, due at once (attempts reset, doubt kept: Postmark is still searched before
        it is sent again). One of a deleted user, other than their goodbye, stays as it is
        (failed, its reason saying what is known of it) and its record must not go back to
        its topic. A row still pending (the notifier may be giving it up right now) is left
        for a later replay."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(_REPLAYED, {"id": notification})).one_or_none()
            if row is None:
                return Replay.UNKNOWN
            if row.erased:
                return Replay.ERASED
            if row.status == "pending":
                return Replay.PENDING
            if row.status != "failed":
                return Replay.SETTLED
            await conn.execute(_REOPEN, {"id": notification})
        return Replay.REOPENED

    async def keep_sources(self, sources: dict[uuid.UUID, SourceRecord]) -> None:
        """Keep the source record on rows recorded before sources were kept, so retries can
        re-plan them."""
        if not sources:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                _KEEP_SOURCES,
                {
                    "ids": list(sources),
                    "sources": [json.dumps(source.as_json()) for source in sources.values()],
                },
            )
        self.on_hand_back()

    async def due_in(self) -> float | None:
        """Seconds until the next pending row may be claimed (≤ 0: now); None if none."""
        async with self.engine.connect() as conn:
            value = (await conn.execute(_DUE_IN)).scalar_one_or_none()
        return float(value) if value is not None else None

    # -- helpers -------------------------------------------------------------------------------

    async def _release(
        self,
        delays: dict[uuid.UUID, float],
        *,
        claim: str,
        ambiguous: bool = False,
        count: bool = False,
        settle: bool = False,
        error: str | None = None,
    ) -> None:
        if not delays:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                _RELEASE,
                {
                    "ids": list(delays),
                    "delays": list(delays.values()),
                    "ambiguous": ambiguous,
                    "count_attempt": int(count),
                    "settle": self.settle if settle else None,
                    "reach": self.reach,
                    "error": error[:MAX_ERROR] if error else None,
                    "owner": claim,
                },
            )
        self.on_hand_back()

    @staticmethod
    async def _finish(
        conn: AsyncConnection, status: str, rows: Sequence[tuple[uuid.UUID, str]]
    ) -> list[_Finished]:
        result = await conn.execute(
            _FINISH,
            {
                "status": status,
                "ids": [row_id for row_id, _ in rows],
                "errors": [error[:MAX_ERROR] for _, error in rows],
            },
        )
        return [
            _Finished(
                r.id,
                r.event_id,
                r.user_id,
                r.template,
                r.recipient,
                r.last_error,
                r.event_type,
                r.address,
            )
            for r in result
        ]

    async def _announce_suppressed(
        self, conn: AsyncConnection, blocked: Sequence[_Finished]
    ) -> None:
        await self.outbox.add_many(
            conn,
            [
                events.Event(
                    events.EmailSuppressed(
                        **_event_fields(row), message_id=None, reason=row.reason or ""
                    ),
                    source=events.SOURCE_NOTIFIER,
                )
                for row in blocked
            ],
        )
