"""Send-once delivery of planned emails (invariants 6 and 7).

- Every planned email is recorded as a `pending` notification, under its deterministic id,
  before anything is sent; a repeated event finds its notifications and sends nothing new.
- Nothing goes to a suppressed address, nor, in staging, outside the allowlist.
- Before each send the attempt is committed (attempts + 1 and a fresh `attempt_id`, which
  every message of the attempt carries as Metadata). Postmark has no idempotency key, so
  whenever a notification is still pending after an attempt (a timeout, a 5xx, a crash
  between Postmark's answer and our commit), the next round first asks Postmark for the
  messages of that attempt and marks the ones it holds as sent instead of sending again.
- Each status change is committed together with its `email.*` event.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from opentelemetry.trace import SpanKind
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notifier.metrics import NotifierMetrics
from notifier.plans import PlannedEmail
from notifier.postmark import (
    INACTIVE_RECIPIENT,
    Accepted,
    Postmark,
    PostmarkUnavailable,
    Rejected,
    RequestRejected,
)
from notifier.rendering import Renderer
from outbox_relay.outbox import OutboxWriter
from postroom import events, tokens
from postroom.backoff import Backoff
from postroom.models import notifications, suppressions
from postroom.settings import NotifierSettings
from postroom.tracing import context_from, links_to, tracer

log = structlog.get_logger("postroom.notifier")

_MARK_SENT = sa.text(
    """
    UPDATE notifications AS n
    SET status = 'sent', message_id = v.message_id, sent_at = now(), last_error = NULL,
        updated_at = now()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:mids AS text[])) AS v(id, message_id)
    WHERE n.id = v.id AND n.status = 'pending'
    RETURNING n.id
    """
)


@dataclass
class DeliveryReport:
    """What the caller still has to act on: emails given up after their last attempt."""

    gave_up: list[tuple[PlannedEmail, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Pending:
    plan: PlannedEmail
    attempts: int
    attempt_id: str | None


def _event_fields(plan: PlannedEmail) -> dict[str, Any]:
    return {
        "notification_id": plan.id,
        "email": plan.recipient,
        "template": plan.template,
        "user_id": plan.user_id,
        "source_event_id": plan.event_id,
    }


class Delivery:
    def __init__(
        self,
        settings: NotifierSettings,
        *,
        engine: AsyncEngine,
        postmark: Postmark,
        outbox: OutboxWriter,
        metrics: NotifierMetrics,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.postmark = postmark
        self.outbox = outbox
        self.metrics = metrics
        self.renderer = Renderer()

    async def deliver(self, planned: Sequence[PlannedEmail]) -> DeliveryReport:
        """Bring each planned email to sent, suppressed or failed. Raises
        PostmarkUnauthorized, leaving the rest pending, when the server token is refused."""
        report = DeliveryReport()
        if not planned:
            return report
        by_id = {plan.id: plan for plan in planned}
        await self._record(list(by_id.values()))
        backoff = Backoff(
            self.settings.notifier_backoff_initial, self.settings.notifier_backoff_max
        )
        while True:
            pending = await self._pending(by_id)
            pending = await self._screen(pending)
            pending = await self._reconcile(pending)
            if not pending:
                return report
            exhausted = [p for p in pending if p.attempts >= self.settings.notifier_max_attempts]
            if exhausted:
                await self._give_up(exhausted, report)
                pending = [p for p in pending if p not in exhausted]
                if not pending:
                    return report
            retry = await self._attempt(pending)
            if not retry:
                continue  # one more round settles the rest, or finds nothing pending
            self.metrics.retries.inc(len(pending))
            delay = backoff.next_delay()
            log.warning(
                "postmark unavailable; backing off", seconds=round(delay, 2), pending=len(pending)
            )
            await asyncio.sleep(delay)

    # -- steps -------------------------------------------------------------------------------

    async def _record(self, planned: list[PlannedEmail]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                pg_insert(notifications).on_conflict_do_nothing(index_elements=["id"]),
                [
                    {
                        "id": plan.id,
                        "event_id": plan.event_id,
                        "event_type": plan.event_type,
                        "user_id": plan.user_id,
                        "template": plan.template,
                        "recipient": plan.recipient,
                    }
                    for plan in planned
                ],
            )

    async def _pending(self, by_id: dict[uuid.UUID, PlannedEmail]) -> list[_Pending]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(
                    notifications.c.id, notifications.c.attempts, notifications.c.attempt_id
                ).where(notifications.c.id.in_(list(by_id)), notifications.c.status == "pending")
            )
            return [_Pending(by_id[row.id], row.attempts, row.attempt_id) for row in rows]

    async def _screen(self, pending: list[_Pending]) -> list[_Pending]:
        """Suppress what must not be sent: suppressed addresses, and outside the staging
        allowlist."""
        if not pending:
            return pending
        recipients = sorted({p.plan.recipient.lower() for p in pending})
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(suppressions.c.email, suppressions.c.reason).where(
                    suppressions.c.email.in_(recipients)
                )
            )
            suppressed = {row.email: row.reason for row in rows}
        blocked: list[tuple[_Pending, str]] = []
        for p in pending:
            address = p.plan.recipient.lower()
            if address in suppressed:
                blocked.append((p, f"suppressed: {suppressed[address]}"))
            elif not self.settings.allowed_in_staging(address):
                blocked.append((p, "not on STAGING_ALLOWED_RECIPIENTS"))
        if blocked:
            async with self.engine.begin() as conn:
                for p, reason in blocked:
                    await self._mark_suppressed(conn, p.plan, reason)
        blocked_ids = {p.plan.id for p, _ in blocked}
        return [p for p in pending if p.plan.id not in blocked_ids]

    async def _reconcile(self, pending: list[_Pending]) -> list[_Pending]:
        """Ask Postmark about earlier attempts before sending again."""
        attempts = sorted({p.attempt_id for p in pending if p.attempt_id})
        if not attempts:
            return pending
        found: dict[str, str] = {}
        for attempt_id in attempts:
            found.update(await self.postmark.find_sent(attempt_id))
        if not found:
            return pending
        already = [(p, found[str(p.plan.id)]) for p in pending if str(p.plan.id) in found]
        async with self.engine.begin() as conn:
            await self._mark_all_sent(conn, [(p.plan, mid) for p, mid in already])
        log.info("found earlier sends at Postmark; not sending again", count=len(already))
        self.metrics.reconciled.inc(len(already))
        return [p for p in pending if str(p.plan.id) not in found]

    async def _attempt(self, pending: list[_Pending]) -> bool:
        """Send every pending email once; True if some must be tried again."""
        attempt_id = uuid.uuid4().hex
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(notifications)
                .where(notifications.c.id.in_([p.plan.id for p in pending]))
                .values(
                    attempts=notifications.c.attempts + 1,
                    attempt_id=attempt_id,
                    updated_at=sa.func.now(),
                )
            )
        retry = False
        for start in range(0, len(pending), self.settings.notifier_batch_size):
            chunk = [p.plan for p in pending[start : start + self.settings.notifier_batch_size]]
            messages = [self._message(plan, attempt_id) for plan in chunk]
            loop = asyncio.get_running_loop()
            started = loop.time()
            traces = [plan.traceparent for plan in chunk]
            try:
                with tracer.start_as_current_span(
                    "postmark send batch",
                    context=context_from(next((t for t in traces if t), None)),
                    links=links_to(traces[1:]),
                    kind=SpanKind.CLIENT,
                    attributes={"messaging.batch.message_count": len(chunk)},
                ):
                    results = await self.postmark.send_batch(messages)
            except PostmarkUnavailable as exc:
                retry = True
                await self._note_error(chunk, str(exc))
                continue
            except RequestRejected as exc:
                results = [Rejected(exc.error_code, str(exc))] * len(chunk)
            self.metrics.send_latency.observe(loop.time() - started)
            self.metrics.batches.inc()
            async with self.engine.begin() as conn:
                accepted = [
                    (plan, result.message_id)
                    for plan, result in zip(chunk, results, strict=True)
                    if isinstance(result, Accepted)
                ]
                await self._mark_all_sent(conn, accepted)
                for plan, result in zip(chunk, results, strict=True):
                    if isinstance(result, Accepted):
                        continue
                    if result.error_code == INACTIVE_RECIPIENT:
                        await self._suppress_address(conn, plan.recipient, result.message)
                        await self._mark_suppressed(
                            conn, plan, f"inactive at Postmark: {result.message}"
                        )
                    else:
                        await self._mark_failed(
                            conn, plan, f"ErrorCode {result.error_code}: {result.message}"
                        )
        return retry

    async def _give_up(self, exhausted: list[_Pending], report: DeliveryReport) -> None:
        async with self.engine.begin() as conn:
            for p in exhausted:
                error = f"gave up after {p.attempts} attempts"
                last = (
                    await conn.execute(
                        sa.select(notifications.c.last_error).where(notifications.c.id == p.plan.id)
                    )
                ).scalar_one_or_none()
                reason = f"{error}: {last}" if last else error
                await self._mark_failed(conn, p.plan, reason)
                report.gave_up.append((p.plan, reason))

    # -- messages and status changes ----------------------------------------------------------

    def _message(self, plan: PlannedEmail, attempt_id: str) -> dict[str, Any]:
        context = dict(plan.context)
        if plan.verification and plan.user_id is not None:
            token = tokens.issue_token(
                self.settings.email_token_secret.get_secret_value(),
                user_id=plan.user_id,
                email=plan.recipient,
            )
            base = self.settings.public_base_url.rstrip("/")
            context["verify_url"] = f"{base}/verify-email?token={token}"
        rendered = self.renderer.render(plan.template, context)
        return {
            "From": self.settings.mail_from,
            "To": plan.recipient,
            "Subject": rendered.subject,
            "HtmlBody": rendered.html,
            "TextBody": rendered.text,
            "Tag": plan.template,
            "MessageStream": self.settings.postmark_message_stream,
            "Metadata": {
                "notification_id": str(plan.id),
                "event_id": str(plan.event_id),
                "user_id": str(plan.user_id) if plan.user_id else "",
                "attempt_id": attempt_id,
            },
        }

    async def _note_error(self, chunk: list[PlannedEmail], error: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(notifications)
                .where(notifications.c.id.in_([plan.id for plan in chunk]))
                .values(last_error=error[:2000], updated_at=sa.func.now())
            )

    async def _transition(
        self, conn: AsyncConnection, plan: PlannedEmail, values: dict[str, Any]
    ) -> bool:
        """Move a pending notification on; False if it was no longer pending."""
        result = await conn.execute(
            sa.update(notifications)
            .where(notifications.c.id == plan.id, notifications.c.status == "pending")
            .values(**values, updated_at=sa.func.now())
            .returning(notifications.c.id)
        )
        return result.first() is not None

    async def _mark_all_sent(
        self,
        conn: AsyncConnection,
        accepted: list[tuple[PlannedEmail, str]],
    ) -> None:
        """Mark accepted messages sent and add their `email.sent` events: one statement for
        the statuses and one for the events, however many messages."""
        if not accepted:
            return
        moved = {
            row.id
            for row in await conn.execute(
                _MARK_SENT,
                {"ids": [plan.id for plan, _ in accepted], "mids": [mid for _, mid in accepted]},
            )
        }
        await self.outbox.add_many(
            conn,
            [
                events.Event(
                    events.EmailSent(**_event_fields(plan), message_id=message_id),
                    source=events.SOURCE_NOTIFIER,
                )
                for plan, message_id in accepted
                if plan.id in moved
            ],
        )
        self.metrics.sent.inc(len(moved))

    async def _mark_suppressed(
        self, conn: AsyncConnection, plan: PlannedEmail, reason: str
    ) -> None:
        if await self._transition(conn, plan, {"status": "suppressed", "last_error": reason}):
            await self.outbox.add(
                conn,
                events.Event(
                    events.EmailSuppressed(**_event_fields(plan), message_id=None, reason=reason),
                    source=events.SOURCE_NOTIFIER,
                ),
            )
            self.metrics.suppressed.inc()

    async def _mark_failed(self, conn: AsyncConnection, plan: PlannedEmail, error: str) -> None:
        if await self._transition(conn, plan, {"status": "failed", "last_error": error[:2000]}):
            await self.outbox.add(
                conn,
                events.Event(
                    events.EmailFailed(**_event_fields(plan), error=error[:2000]),
                    source=events.SOURCE_NOTIFIER,
                ),
            )
            self.metrics.failed.inc()

    @staticmethod
    async def _suppress_address(conn: AsyncConnection, address: str, details: str) -> None:
        await conn.execute(
            pg_insert(suppressions)
            .values(
                email=address.lower(),
                reason="InactiveRecipient",
                origin="Postmark",
                details=details[:2000],
            )
            .on_conflict_do_nothing(index_elements=["email"])
        )
