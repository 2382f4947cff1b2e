"""Send-once delivery of planned emails (invariants 6 and 7).

- Every planned email is recorded as a notification under its deterministic id, with the
  Kafka record that asked for it, before anything is sent; a repeated event records nothing
  new. A fresh notification is recorded, claimed and its first attempt begun in one
  statement, which also reads the suppression list.
- Only the holder of a live claim sends, and only the rows its claim statement returned
  (`notifier/store.py`). A second notifier that reads the same record, during a rebalance or
  after a crash, finds the rows claimed and leaves them.
- An attempt is stamped only once a send slot is held (`Postmark.send_slot`): its call then
  starts at once, never waits for a thread while its claim runs out, and ends by its total
  deadline; so it reaches Postmark within `call_reach` of its stamp, well inside its claim.
- Postmark has no idempotency key. When an attempt's outcome is unknown (a timeout, a broken
  connection, a 5xx, a crash) the notification is in doubt: before it is sent again Postmark
  is searched for any message carrying its `notification_id`, and "not found" is believed
  only once `NOTIFIER_SEARCH_SETTLE` seconds have passed since that attempt could last have
  reached Postmark, as Postmark's search lags behind acceptance. Until then the notification
  waits in the table; the retry loop picks it up when it is due, so it holds up nothing
  else. A notification in doubt whose address was suppressed meanwhile is searched for too,
  and ends `sent` if Postmark holds it: its status says what Postmark accepted.
- An acceptance that comes when its row is final already, or claimed by another notifier,
  is never dropped: the row ends `sent` and records it as late, and it is counted.
- A definite refusal (an ErrorCode) is final at once; 429 and a refused connection are
  definite non-acceptances and are simply retried after a backoff.
- Failures to search count toward the attempts; after `NOTIFIER_MAX_ATTEMPTS` the email is
  given up: its record goes to the dead-letter topic first, and only once Kafka holds it is
  the notification marked failed (a dead letter is never lost, at worst written twice).
- Postmark's search shows only what its retention keeps (`POSTMARK_RETENTION_DAYS`): a row in
  doubt whose first attempt is older than that, less a day, is never searched and sent again
  on "not found"; it is given up as `outcome-unknown`.
- Nothing goes to a deleted user but the goodbye (invariant 10): the store settles their other
  rows, whichever way they come back (a redelivered record, a replay, a retry).
- Each status change is committed together with its `email.*` event.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import structlog
from opentelemetry.trace import SpanKind

from notifier.metrics import NotifierMetrics
from notifier.plans import PlannedEmail, SourceRecord, UnreadableEvent, replan
from notifier.postmark import (
    INACTIVE_RECIPIENT,
    SEARCH_THREADS,
    Accepted,
    MessageResult,
    PostmarkUnauthorized,
    PostmarkUnavailable,
    RequestRejected,
    SendSlot,
)
from notifier.settings import NotifierSettings
from notifier.store import USER_DELETED, ClaimedRow, LateAcceptance, NotificationStore
from postroom import tokens
from postroom.backoff import delay_after
from postroom.emails import Emails, EmailSpec, TemplateProblem
from postroom.tracing import context_from, links_to, tracer

log = structlog.get_logger("postroom.notifier")
T = TypeVar("T")

DELIVERY_FAILED = "delivery-failed"
OUTCOME_UNKNOWN = "outcome-unknown"
# An email its templates cannot render for this event's data (a team template that fails on
# some users): given up and dead-lettered alone; replay it once the templates are fixed.
TEMPLATE_PROBLEM = "template-problem"
# Postmark's template errors (its 11xx codes: a template not found, a model it cannot use):
# the template is the team's to fix, so such an email is dead-lettered, not failed for good.
TEMPLATE_ERRORS = range(1100, 1200)
UNKNOWN_OUTCOME = "whether an earlier attempt was accepted is unknown"
# Longest wait for the dead-letter topic to acknowledge one record.
DEAD_LETTER_TIMEOUT = 15.0


class Mailer(Protocol):
    """What delivery needs of Postmark (`notifier.postmark.Postmark`)."""

    def send_slot(self) -> AbstractAsyncContextManager[SendSlot]: ...

    async def send_batch(
        self, messages: Sequence[dict[str, Any]], *, slot: SendSlot
    ) -> list[MessageResult]: ...

    async def find_sent(self, notification_id: str, stream: str) -> str | None: ...


class DeadLetters(Protocol):
    """Where an email that is given up goes (`notifier.dlq.DeadLetterWriter`)."""

    async def write(
        self, source: SourceRecord, *, reason: str, error: str, notification_id: uuid.UUID | None
    ) -> None: ...


def claimant_name() -> str:
    """Who holds a claim, for operators reading the table: host, process, and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Delivery:
    def __init__(
        self,
        settings: NotifierSettings,
        *,
        store: NotificationStore,
        postmark: Mailer,
        dead_letters: DeadLetters,
        metrics: NotifierMetrics,
        emails: Emails | None = None,
    ) -> None:
        self.settings = settings
        self.emails = emails or settings.load_emails()
        self.store = store
        self.postmark = postmark
        self.dead_letters = dead_letters
        self.metrics = metrics
        self._searches = asyncio.Semaphore(SEARCH_THREADS)

    async def intake(
        self, planned: Sequence[PlannedEmail], sources: dict[uuid.UUID, SourceRecord]
    ) -> None:
        """Record the emails a batch of records asks for and send each new one that may be
        sent, a Postmark batch at a time; what is left pending is the retry loop's. `sources`
        maps event id to its record. Raises PostmarkUnauthorized when the token is refused."""
        by_id = {plan.id: plan for plan in planned}
        if not by_id:
            return
        claim = claimant_name()
        earlier: list[uuid.UUID] = []
        for chunk in self._batches(list(by_id.values()), lambda plan: plan):
            attempt_id = uuid.uuid4().hex
            messages, broken = self._messages(chunk, attempt_id)
            # Recorded, claimed, screened and begun in one statement under a send slot, then
            # sent at once: nothing else happens between this claim and the Postmark call.
            async with self.postmark.send_slot() as slot:
                claimed, suppressed = await self.store.record(
                    chunk,
                    sources,
                    not_allowed={
                        plan.id: "not on STAGING_ALLOWED_RECIPIENTS"
                        for plan in chunk
                        if not self.settings.allowed_in_staging(plan.recipient)
                    },
                    attempt_id=attempt_id,
                    claim=claim,
                )
                refused = await self._send(
                    [row for row in claimed if row.id not in broken], by_id, messages, claim, slot
                )
            await self._unrenderable(claimed, broken, by_id, claim)
            if refused:
                await self._give_up(refused, by_id, claim, dead_letter=TEMPLATE_PROBLEM)
            self.metrics.suppressed.inc(len(suppressed))
            seen = {row.id for row in claimed} | {plan.id for plan, _ in suppressed}
            earlier += [plan.id for plan in chunk if plan.id not in seen]
        if earlier:
            # Recorded before (a repeat, a replay, another notifier's): the retry loop works
            # on whichever of them are pending and due. Rows recorded before sources were
            # kept get theirs now, so it can.
            await self.store.keep_sources(
                {plan_id: sources[by_id[plan_id].event_id] for plan_id in earlier}
            )

    async def sweep(self, *, limit: int | None = None) -> int:
        """Claim the pending notifications that are due (retries, waits that ended, claims
        that expired) and work on them; return how many were claimed."""
        claim = claimant_name()
        rows = await self.store.claim(claim=claim, limit=limit or self.settings.notifier_batch_size)
        erased = [
            (row.id, f"{USER_DELETED}; {UNKNOWN_OUTCOME}" if row.in_doubt else USER_DELETED)
            for row in rows
            if row.erased
        ]
        if erased:  # settled as they are: not planned again, not searched, not dead-lettered
            self.metrics.suppressed.inc(await self.store.mark_suppressed(erased))
            rows = [row for row in rows if not row.erased]
        plans: dict[uuid.UUID, PlannedEmail] = {}
        unplannable: list[tuple[ClaimedRow, str]] = []
        for row in rows:
            try:
                assert row.source is not None  # the sweep claims only rows with a source
                plans[row.id] = replan(row.source, row.id, self.emails.catalogue)
            except UnreadableEvent as exc:
                unplannable.append((row, f"gave up: cannot plan the email again: {exc}"))
        if unplannable:
            log.error("pending notifications cannot be planned again", count=len(unplannable))
            # One in doubt may have been sent (its email renamed or removed from the
            # catalogue since): Postmark is asked first, in every stream, and what it holds
            # is marked sent; only the rest are given up.
            reasons = {row.id: reason for row, reason in unplannable}
            doubtful = [row for row, _ in unplannable if row.in_doubt and row.searchable]
            cleared = {row.id for row in await self._reconcile(doubtful, plans, claim)}
            searched = {row.id for row in doubtful}
            unplannable = [
                (row, reasons[row.id])
                for row, _ in unplannable
                if row.id not in searched or row.id in cleared
            ]
            await self._give_up(unplannable, plans, claim)
        await self._work([row for row in rows if row.id in plans], plans, claim)
        return len(rows)

    # -- one round over claimed rows ----------------------------------------------------------

    async def _work(
        self, rows: list[ClaimedRow], plans: dict[uuid.UUID, PlannedEmail], claim: str
    ) -> None:
        if not rows:
            return
        blocked: dict[uuid.UUID, str] = {}
        for row in rows:
            if row.suppressed is not None:
                blocked[row.id] = f"suppressed: {row.suppressed}"
            elif not self.settings.allowed_in_staging(plans[row.id].recipient):
                blocked[row.id] = "not on STAGING_ALLOWED_RECIPIENTS"
        # A blocked row is never sent again; one in doubt may have been sent already, so
        # Postmark is asked first and its status says what Postmark holds.
        sure = [(row.id, blocked[row.id]) for row in rows if row.id in blocked and not row.in_doubt]
        if sure:
            self.metrics.suppressed.inc(await self.store.mark_suppressed(sure))

        # Postmark no longer keeps what an attempt this old may have left: its search could
        # not tell, so such a row is never sent again (blocked anyway, or given up).
        unsearchable = [row for row in rows if row.in_doubt and not row.searchable]
        never_searched = [
            (row.id, f"{blocked[row.id]}; {UNKNOWN_OUTCOME}")
            for row in unsearchable
            if row.id in blocked
        ]
        if never_searched:
            self.metrics.suppressed.inc(await self.store.mark_suppressed(never_searched))
        forgotten = [row for row in unsearchable if row.id not in blocked]
        if forgotten:
            days = self.settings.postmark_retention_days
            await self._give_up(
                [
                    (
                        row,
                        "gave up: an earlier attempt's outcome is unknown, and it may be older "
                        f"than Postmark keeps messages (POSTMARK_RETENTION_DAYS={days}): its "
                        "search could not tell whether it was sent",
                    )
                    for row in forgotten
                ],
                plans,
                claim,
                dead_letter=OUTCOME_UNKNOWN,
            )
        rows = [row for row in rows if row.searchable or not row.in_doubt]

        sendable = [row for row in rows if not row.in_doubt and row.id not in blocked]
        cleared = await self._reconcile([row for row in rows if row.in_doubt], plans, claim)
        never = [(row.id, blocked[row.id]) for row in cleared if row.id in blocked]
        if never:
            self.metrics.suppressed.inc(await self.store.mark_suppressed(never))
        sendable += [row for row in cleared if row.id not in blocked]

        limit = self.settings.notifier_max_attempts
        exhausted = [row for row in sendable if row.attempts >= limit]
        if exhausted:
            await self._give_up(
                [
                    (
                        row,
                        f"gave up after {row.attempts} attempts"
                        + (f": {row.last_error}" if row.last_error else ""),
                    )
                    for row in exhausted
                ],
                plans,
                claim,
            )
        sendable = [row for row in sendable if row.attempts < limit]

        for chunk in self._batches(sendable, lambda row: plans[row.id]):
            attempt_id = uuid.uuid4().hex
            messages, broken = self._messages([plans[row.id] for row in chunk], attempt_id)
            if broken:
                await self._unrenderable(chunk, broken, plans, claim)
                chunk = [row for row in chunk if row.id not in broken]
                if not chunk:
                    continue
            # Begun right before its call, under a send slot, so the claim, the suppression
            # list (on the address it goes to), the user's erasure and the attempt's start are
            # all checked and stamped as late as they can be.
            async with self.postmark.send_slot() as slot:
                held = await self.store.start_attempt(
                    {row.id: plans[row.id].recipient for row in chunk}, attempt_id, claim=claim
                )
                begun = [row for row in chunk if row.id in held and held[row.id] is None]
                refused = await self._send(begun, plans, messages, claim, slot)
            if refused:
                await self._give_up(refused, plans, claim, dead_letter=TEMPLATE_PROBLEM)
            late = [(row_id, reason) for row_id, reason in held.items() if reason is not None]
            if late:  # suppressed (or its user deleted) while its search or backoff went on
                self.metrics.suppressed.inc(await self.store.mark_suppressed(late))
            self.metrics.retries.inc(len(begun))

    async def _reconcile(
        self, rows: list[ClaimedRow], plans: dict[uuid.UUID, PlannedEmail], claim: str
    ) -> list[ClaimedRow]:
        """Ask Postmark about rows in doubt; return those it may be sent again."""
        if not rows:
            return []

        async def search(row: ClaimedRow) -> str | Exception | None:
            async with self._searches:
                try:
                    for stream in self._streams_to_search(plans.get(row.id)):
                        found = await self.postmark.find_sent(str(row.id), stream)
                        if found is not None:
                            return found
                    return None
                except PostmarkUnauthorized:
                    raise
                except (PostmarkUnavailable, RequestRejected) as exc:
                    return exc

        answers = await asyncio.gather(*(search(row) for row in rows))
        found: list[tuple[uuid.UUID, str]] = []
        failed: list[tuple[ClaimedRow, Exception]] = []
        waiting: list[ClaimedRow] = []
        again: list[ClaimedRow] = []
        for row, answer in zip(rows, answers, strict=True):
            if isinstance(answer, Exception):
                failed.append((row, answer))
            elif answer is not None:
                found.append((row.id, answer))
            elif not row.settled:
                waiting.append(row)
            else:
                again.append(row)
        for outcome, count in (
            ("found", len(found)),
            ("failed", len(failed)),
            ("not_found", len(waiting) + len(again)),
        ):
            if count:
                self.metrics.searches.labels(outcome).inc(count)
        if found:
            moved, late = await self.store.mark_sent(found, claim=claim)
            self.metrics.reconciled.inc(moved)
            self.metrics.sent.inc(moved)
            self._note_late(late)
            log.info("found earlier sends at Postmark; not sending again", count=moved)
        if waiting:
            await self.store.wait_for_settle([row.id for row in waiting], claim=claim)
        if failed:
            limit = self.settings.notifier_max_attempts
            done = [(row, error) for row, error in failed if row.attempts + 1 >= limit]
            if done:
                await self._give_up(
                    [
                        (
                            row,
                            f"gave up: Postmark's search failed ({error}); whether an earlier "
                            "attempt was accepted is unknown",
                        )
                        for row, error in done
                    ],
                    plans,
                    claim,
                )
            retry = [row for row, error in failed if row.attempts + 1 < limit]
            if retry:
                await self.store.release(
                    {row.id: self._backoff(row.attempts + 1) for row in retry},
                    claim=claim,
                    count_attempt=True,
                    error=f"search failed: {failed[0][1]}",
                )
                log.warning("postmark search failed; backing off", pending=len(retry))
        return again

    async def _send(
        self,
        chunk: list[ClaimedRow],
        plans: dict[uuid.UUID, PlannedEmail],
        messages: dict[uuid.UUID, dict[str, Any]],
        claim: str,
        slot: SendSlot,
    ) -> list[tuple[ClaimedRow, str]]:
        """One Postmark batch call for rows whose attempt was just begun under `slot`, and
        its outcome; returned, the rows Postmark refused for their template (to be given up
        and dead-lettered once the slot is free)."""
        if not chunk:
            return []
        emails = [plans[row.id] for row in chunk]
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Child of the first email's trace (its record's `process` span on a first attempt,
        # the record's `send` span on a retry), linked once to each other one it carries.
        traces = [plan.traceparent for plan in emails if plan.traceparent]
        parent = traces[0] if traces else None
        try:
            with tracer.start_as_current_span(
                "postmark send batch",
                context=context_from(parent),
                links=links_to(dict.fromkeys(t for t in traces if t != parent)),
                kind=SpanKind.CLIENT,
                attributes={"messaging.batch.message_count": len(emails)},
            ):
                results = await self.postmark.send_batch(
                    [messages[row.id] for row in chunk], slot=slot
                )
        except PostmarkUnauthorized:
            # Nothing was accepted: hand the rows back, in no doubt, and stop.
            await self.store.release({row.id: 0.0 for row in chunk}, claim=claim)
            raise
        except (PostmarkUnavailable, RequestRejected) as exc:
            # Ambiguous: search soon (the index may have caught up), and again after the
            # settle window before sending. Definite (429, a refused connection, a call that
            # could not start in time, the whole request refused as it stands): back off and
            # try again, up to the attempts.
            ambiguous = isinstance(exc, PostmarkUnavailable) and exc.ambiguous
            await self.store.release(
                {row.id: self._backoff(row.attempts) for row in chunk},
                claim=claim,
                ambiguous=ambiguous,
                error=str(exc),
            )
            log.warning(
                "postmark did not take the batch; backing off",
                ambiguous=ambiguous,
                pending=len(chunk),
                error=str(exc)[:300],
            )
            return []
        self.metrics.send_latency.observe(loop.time() - started)
        self.metrics.batches.inc()
        accepted: list[tuple[uuid.UUID, str]] = []
        inactive: list[tuple[uuid.UUID, str]] = []
        refused: list[tuple[uuid.UUID, str]] = []
        template_refused: list[tuple[ClaimedRow, str]] = []
        for row, plan, result in zip(chunk, emails, results, strict=True):
            if isinstance(result, Accepted):
                accepted.append((plan.id, result.message_id))
            elif result.error_code == INACTIVE_RECIPIENT:
                inactive.append((plan.id, f"inactive at Postmark: {result.message}"))
            elif result.error_code in TEMPLATE_ERRORS:
                # The team's Postmark template is missing or broken: nothing was sent, and
                # it will be once the template is there (a replay of the dead letter).
                template_refused.append((row, f"ErrorCode {result.error_code}: {result.message}"))
            else:
                refused.append((plan.id, f"ErrorCode {result.error_code}: {result.message}"))
        moved, late = await self.store.mark_sent(accepted, claim=claim)
        self.metrics.sent.inc(moved)
        self._note_late(late)
        if inactive:
            moved = await self.store.mark_suppressed(inactive, inactive_at_postmark=True)
            self.metrics.suppressed.inc(moved)
        if refused:
            self.metrics.failed.inc(await self.store.mark_failed(refused))
        return template_refused

    async def _give_up(
        self,
        rows: list[tuple[ClaimedRow, str]],
        plans: dict[uuid.UUID, PlannedEmail],
        claim: str,
        *,
        dead_letter: str = DELIVERY_FAILED,
    ) -> None:
        """Dead-letter each email's record, then mark it failed. If the dead-letter topic is
        out of reach the emails stay pending and are given up again later."""
        written: list[tuple[ClaimedRow, str]] = []
        for at, (row, reason) in enumerate(rows):
            try:
                assert row.source is not None
                async with asyncio.timeout(DEAD_LETTER_TIMEOUT):
                    await self.dead_letters.write(
                        row.source, reason=dead_letter, error=reason, notification_id=row.id
                    )
            except Exception as exc:  # any failure: this one and the rest stay pending
                log.warning(
                    "dead-letter topic unavailable; emails stay pending",
                    pending=len(rows) - at,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
                await self.store.release(
                    {r.id: self._backoff(r.attempts) for r, _ in rows[at:]},
                    claim=claim,
                    error=reason,
                )
                break
            self.metrics.dead_letters.labels(dead_letter).inc()
            written.append((row, reason))
        if written:
            failed = [(row.id, reason) for row, reason in written]
            self.metrics.failed.inc(await self.store.mark_failed(failed))

    def _note_late(self, late: list[LateAcceptance]) -> None:
        if not late:
            return
        self.metrics.late_acceptances.inc(len(late))
        log.warning(
            "postmark accepted messages for notifications already final or claimed by "
            "another notifier; recorded on them as late",
            count=len(late),
            notifications=[str(item.id) for item in late[:20]],
            statuses=sorted({item.was for item in late}),
        )

    def _backoff(self, failures: int) -> float:
        return delay_after(
            failures,
            initial=self.settings.notifier_backoff_initial,
            cap=self.settings.notifier_backoff_max,
        )

    def _batches(self, items: list[T], plan_of: Callable[[T], PlannedEmail]) -> list[list[T]]:
        """`items` in Postmark calls: those sent with a Postmark template apart from those
        rendered here (two endpoints), at most NOTIFIER_BATCH_SIZE a call, in order."""
        size = self.settings.notifier_batch_size
        kinds: dict[bool, list[T]] = {}
        for item in items:
            kinds.setdefault(_spec(plan_of(item)).postmark_template is not None, []).append(item)
        return [
            group[at : at + size] for group in kinds.values() for at in range(0, len(group), size)
        ]

    def _stream(self, plan: PlannedEmail) -> str:
        return _spec(plan).stream or self.settings.postmark_message_stream

    def _streams_to_search(self, plan: PlannedEmail | None) -> list[str]:
        """Where an earlier attempt of `plan` may be: Postmark searches one stream at a time,
        and the email's stream may have changed in the catalogue since that attempt. Its own
        stream first, then every other stream the catalogue or POSTMARK_MESSAGE_STREAM names
        (a stream no longer named anywhere is not searched: docs/architecture.md). Without a
        plan (its email left the catalogue): all of those."""
        others = [spec.stream for _, spec in self.emails.catalogue.all() if spec.stream]
        own = [self._stream(plan)] if plan is not None else []
        return list(dict.fromkeys([*own, self.settings.postmark_message_stream, *others]))

    def _messages(
        self, emails: Sequence[PlannedEmail], attempt_id: str
    ) -> tuple[dict[uuid.UUID, dict[str, Any]], dict[uuid.UUID, str]]:
        """Each email's message, rendered before its attempt is stamped (rendering takes
        time, and nothing may stand between the stamp and the call); and why each email
        that cannot be rendered cannot."""
        messages: dict[uuid.UUID, dict[str, Any]] = {}
        broken: dict[uuid.UUID, str] = {}
        for plan in emails:
            try:
                messages[plan.id] = self._message(plan, attempt_id)
            except TemplateProblem as exc:
                broken[plan.id] = f"gave up: the email cannot be rendered: {exc}"
        return messages, broken

    async def _unrenderable(
        self,
        rows: Sequence[ClaimedRow],
        broken: dict[uuid.UUID, str],
        plans: dict[uuid.UUID, PlannedEmail],
        claim: str,
    ) -> None:
        """Give up the claimed emails that cannot be rendered (nothing was sent): their
        records go to the dead-letter topic as `template-problem`, the others go on."""
        failing = [(row, broken[row.id]) for row in rows if row.id in broken]
        if not failing:
            return
        log.error(
            "emails cannot be rendered; dead-lettered, the rest go on",
            count=len(failing),
            reason=failing[0][1][:300],
        )
        await self._give_up(failing, plans, claim, dead_letter=TEMPLATE_PROBLEM)

    def _message(self, plan: PlannedEmail, attempt_id: str) -> dict[str, Any]:
        spec = _spec(plan)
        context = dict(plan.context)
        if plan.verification and plan.user_id is not None:
            token = tokens.issue_token(
                self.settings.email_token_secret.get_secret_value(),
                user_id=plan.user_id,
                email=plan.recipient,
            )
            base = self.settings.public_base_url.rstrip("/")
            context["verify_url"] = f"{base}/verify-email?token={token}"
        message: dict[str, Any] = {"From": self.settings.mail_from, "To": plan.recipient}
        if spec.postmark_template is not None:
            locale = self.emails.postmark_locale(spec, plan.locale)
            message["TemplateAlias"] = self.emails.postmark_alias(spec, plan.locale)
            message["TemplateModel"] = self.emails.variables(context, locale)
        else:
            rendered = self.emails.render(spec.template_name, plan.locale, context)
            message["Subject"] = rendered.subject
            message["HtmlBody"] = rendered.html
            message["TextBody"] = rendered.text
        if self.settings.mail_reply_to:
            message["ReplyTo"] = self.settings.mail_reply_to
        message["Tag"] = spec.tag_or_name
        message["MessageStream"] = self._stream(plan)
        message["Metadata"] = {
            **spec.metadata,
            "notification_id": str(plan.id),
            "event_id": str(plan.event_id),
            "user_id": str(plan.user_id) if plan.user_id else "",
            "attempt_id": attempt_id,
        }
        return message


def _spec(plan: PlannedEmail) -> EmailSpec:
    """What the catalogue says of a planned email (one planned without it: its defaults)."""
    return plan.spec or EmailSpec(name=plan.template, verification_link=plan.verification)
