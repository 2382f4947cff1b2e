"""What the notifier's search of Postmark assumes, held to it end to end: the search looks in
the message stream the notifier sends on, and is never trusted for a message older than the
account's retention (POSTMARK_RETENTION_DAYS)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from notifier.dlq import list_dead_letters
from notifier.plans import SourceRecord, plan
from postroom import events
from tests.support.names import address
from tests.support.postmark import Sandbox
from tests.support.stack import running_stack
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka


async def test_a_lost_answer_on_a_stream_of_its_own_is_found_not_sent_again(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    """Postmark accepts the welcome on the `notices` stream and the answer is lost; the
    search must look in `notices` (Postmark's looks in `outbound` unless told)."""
    email = address("stream")
    async with running_stack(
        database_url,
        kafka_bootstrap,
        sandbox,
        postmark_message_stream="notices",
        postmark_timeout=1.0,
        notifier_lease=2.0,
    ) as stack:
        await stack.wait_consuming()
        await stack.sandbox.put(
            "/api/faults", json={"timeout_rate": 1.0, "timeout_ms": 1500, "timeout_accepts": True}
        )
        await stack.api.post("/v1/users", json={"email": email, "name": "Stream"})

        async def answer_lost() -> bool:
            row = await db.fetchrow(
                "SELECT attempts, attempt_open FROM notifications WHERE recipient = $1", email
            )
            return bool(row and row["attempts"] >= 1 and not row["attempt_open"])

        await wait_until(answer_lost, what="the first attempt to time out", within=30)
        await stack.sandbox.delete("/api/faults")
        [sent] = await stack.wait_status(email, "sent", within=30)
        messages = await stack.messages(email)

    assert [m["MessageStream"] for m in messages] == ["notices"]
    assert (sent["message_id"], sent["attempts"]) == (messages[0]["MessageID"], 1)


async def test_a_doubt_older_than_postmarks_retention_is_dead_lettered_never_resent(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    """A welcome whose attempt timed out 60 days ago (a dead letter replayed late, say): had
    Postmark accepted it, it has purged it since (45 days), so "not found" says nothing."""
    email = address("retention")
    async with running_stack(database_url, kafka_bootstrap, sandbox) as stack:
        await stack.wait_consuming()
        user = uuid.uuid4()
        data = events.UserRegistered(
            user_id=user, version=1, email=email, name="Old", registered_at=datetime.now(UTC)
        )
        source = SourceRecord(
            topic=stack.settings.topic("user"),
            partition=0,
            offset=0,
            key=str(user),
            headers=(("ce_id", str(uuid.uuid4())), ("ce_type", data.event_type)),
            value=data.model_dump_json(),
        )
        [welcome] = plan(source.event())
        await db.execute(
            """
            INSERT INTO notifications (id, event_id, event_type, user_id, template, recipient,
                recipient_key, status, attempts, attempt_id, attempt_started_at, doubt_since,
                source, last_error, created_at, next_attempt_at)
            VALUES ($1, $2, 'user.registered', $3, 'welcome', $4, $4, 'pending', 1, 'a1',
                now() - interval '60 days', now() - interval '60 days', $5::jsonb,
                'timed out', now() - interval '60 days', now())
            """,
            welcome.id,
            welcome.event_id,
            user,
            email,
            json.dumps(source.as_json()),
        )

        async def settled() -> asyncpg.Record | None:
            row = await db.fetchrow(
                "SELECT status, last_error FROM notifications WHERE id = $1", welcome.id
            )
            return row if row is not None and row["status"] != "pending" else None

        row = await wait_until(settled, what="the notifier to settle the row", within=30)
        letters = [
            letter
            for letter in await list_dead_letters(stack.settings)
            if letter.headers.get("dlq_notification_id") == str(welcome.id)
        ]
        messages = await stack.messages(email)

    assert len(messages) == 0, "sent again on a search that could not see the first attempt"
    assert row["status"] == "failed"
    assert "POSTMARK_RETENTION_DAYS=45" in row["last_error"]
    assert [letter.reason for letter in letters] == ["outcome-unknown"]
