"""Postmark's webhooks into the notifier: recorded once, statuses forward only, suppressions
kept, events announced through the outbox (real PostgreSQL, the notifier's HTTP app)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from notifier.app import create_app
from postroom.addresses import address_key
from tests.support.catalog import assert_outbox_matches_the_catalogue
from tests.support.settings import WEBHOOK_PASSWORD, WEBHOOK_USER, make_notifier_settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "postmark"
AUTH = (WEBHOOK_USER, WEBHOOK_PASSWORD)


def fixture(name: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    body.update(changes)
    return body


@pytest.fixture
async def notifier_app(database_url: str) -> AsyncIterator[FastAPI]:
    """The notifier's HTTP app; no consumer (webhooks need none), so no broker either."""
    settings = make_notifier_settings(database_url, "127.0.0.1:9", "http://127.0.0.1:9", "t-hooks")
    app = create_app(settings, consume=False)
    async with LifespanManager(app):
        yield app


def client_of(app: FastAPI, auth: tuple[str, str] | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://notifier", auth=auth
    )


@pytest.fixture
async def hooks(notifier_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(notifier_app, AUTH) as client:
        yield client


async def sent_notification(db: asyncpg.Connection, *, email: str, message_id: str) -> uuid.UUID:
    notification_id, user_id = uuid.uuid4(), uuid.uuid4()
    await db.execute(
        """
        INSERT INTO notifications (id, event_id, event_type, user_id, template, recipient,
                                   recipient_key, status, message_id, attempts, sent_at)
        VALUES ($1, $2, 'user.registered', $3, 'welcome', $4, $6, 'sent', $5, 1, now())
        """,
        notification_id,
        uuid.uuid4(),
        user_id,
        email,
        message_id,
        address_key(email),
    )
    return notification_id


async def status_of(db: asyncpg.Connection, notification_id: uuid.UUID) -> str:
    return str(await db.fetchval("SELECT status FROM notifications WHERE id = $1", notification_id))


async def outbox_events(db: asyncpg.Connection) -> list[tuple[str, dict[str, Any]]]:
    rows = await db.fetch("SELECT event_type, payload FROM outbox ORDER BY id")
    return [(row["event_type"], json.loads(row["payload"])) for row in rows]


async def test_a_hard_bounce_is_recorded_once_and_suppresses_the_address(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = fixture("bounce_hard")
    notification = await sent_notification(db, email=body["Email"], message_id=body["MessageID"])

    first = await hooks.post("/webhooks/postmark", json=body)
    again = await hooks.post("/webhooks/postmark", json=body)

    assert (first.status_code, first.json()) == (200, {"status": "recorded"})
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert await status_of(db, notification) == "bounced"
    stored = await db.fetch("SELECT * FROM bounces")
    assert len(stored) == 1
    assert stored[0]["id"] == 9123372036854775807  # beyond 2^53, stored exactly
    assert stored[0]["notification_id"] == notification
    assert stored[0]["inactive"] is True
    assert json.loads(stored[0]["raw"])["ID"] == 9123372036854775807
    suppression = await db.fetchrow("SELECT * FROM suppressions")
    assert suppression is not None
    assert (suppression["email"], suppression["reason"]) == ("gone@example.net", "HardBounce")
    assert await outbox_events(db) == [
        (
            "email.bounced",
            {
                "email": "gone@example.net",
                "message_id": body["MessageID"],
                "notification_id": str(notification),
                "user_id": (await db.fetchval("SELECT user_id::text FROM notifications")),
                "bounce_id": "9123372036854775807",
                "type": "HardBounce",
                "inactive": True,
            },
        )
    ]


async def test_webhooks_after_a_deletion_keep_the_address_only_for_the_goodbye(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Postmark reports a welcome's bounce and delivery after its user was deleted: stored and
    announced without the address, though the address is still suppressed. The goodbye's
    bounce still names it (docs/events.md)."""
    email = "late@example.net"
    welcome = await sent_notification(db, email=email, message_id="m-welcome")
    user_id = await db.fetchval("SELECT user_id FROM notifications WHERE id = $1", welcome)
    goodbye = uuid.uuid4()
    await db.execute(
        """
        INSERT INTO notifications (id, event_id, event_type, user_id, template, recipient,
                                   recipient_key, status, message_id, attempts, sent_at)
        VALUES ($1, $2, 'user.deleted', $3, 'goodbye', $4, $4, 'sent', 'm-goodbye', 1, now())
        """,
        goodbye,
        uuid.uuid4(),
        user_id,
        email,
    )
    await db.execute("INSERT INTO erased_users (user_id) VALUES ($1)", user_id)

    answers = [
        await hooks.post("/webhooks/postmark", json=body)
        for body in (
            fixture("delivery", MessageID="m-welcome", Recipient=email),
            fixture("bounce_hard", ID=1, MessageID="m-welcome", Email=email),
            fixture("bounce_hard", ID=2, MessageID="m-goodbye", Email=email),
        )
    ]

    assert [a.json() for a in answers] == [{"status": "recorded"}] * 3
    stored = {
        r["id"]: r for r in await db.fetch("SELECT id, email, details, raw::text FROM bounces")
    }
    assert (stored[1]["email"], stored[1]["details"], stored[1]["raw"]) == ("", None, "{}")
    assert stored[2]["email"] == email
    named = [(kind, payload["email"]) for kind, payload in await outbox_events(db)]
    assert named == [("email.delivered", ""), ("email.bounced", ""), ("email.bounced", email)]
    assert await db.fetchval("SELECT reason FROM suppressions") == "HardBounce"


async def test_a_soft_bounce_does_not_suppress(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = fixture("bounce_hard", ID=123, Type="SoftBounce", TypeCode=4096, Inactive=False)
    answer = await hooks.post("/webhooks/postmark", json=body)
    assert answer.status_code == 200
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    [(kind, data)] = await outbox_events(db)
    assert (kind, data["inactive"], data["notification_id"]) == ("email.bounced", False, None)


async def test_a_spam_complaint_suppresses_for_good(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = fixture("spam_complaint")
    notification = await sent_notification(db, email=body["Email"], message_id=body["MessageID"])

    assert (await hooks.post("/webhooks/postmark", json=body)).status_code == 200

    assert await status_of(db, notification) == "complained"
    assert await db.fetchval("SELECT can_activate FROM bounces") is False
    assert await db.fetchval("SELECT reason FROM suppressions") == "SpamComplaint"
    assert [kind for kind, _ in await outbox_events(db)] == ["email.complained"]


async def test_delivery_moves_forward_only(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    delivery = fixture("delivery")
    delivered = await sent_notification(
        db, email=delivery["Recipient"], message_id=delivery["MessageID"]
    )
    assert (await hooks.post("/webhooks/postmark", json=delivery)).status_code == 200
    assert (await hooks.post("/webhooks/postmark", json=delivery)).json() == {"status": "duplicate"}
    assert await status_of(db, delivered) == "delivered"

    # A bounce, then a late delivery of the same message: still bounced.
    bounce = fixture("bounce_hard", ID=77, Email="late@example.com")
    bounced = await sent_notification(db, email="late@example.com", message_id=bounce["MessageID"])
    await hooks.post("/webhooks/postmark", json=bounce)
    late = fixture("delivery", MessageID=bounce["MessageID"], Recipient="late@example.com")
    assert (await hooks.post("/webhooks/postmark", json=late)).status_code == 200
    assert await status_of(db, bounced) == "bounced"
    assert [kind for kind, _ in await outbox_events(db)] == [
        "email.delivered",
        "email.bounced",
        "email.delivered",
    ]


async def test_subscription_changes_suppress_and_reactivate(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    suppress = fixture("subscription_change")
    assert (await hooks.post("/webhooks/postmark", json=suppress)).status_code == 200
    row = await db.fetchrow("SELECT * FROM suppressions")
    assert row is not None
    assert (row["email"], row["reason"], row["origin"]) == (
        "done@example.com",
        "ManualSuppression",
        "Recipient",
    )

    lift = fixture(
        "subscription_change",
        SuppressSending=False,
        SuppressionReason=None,
        ChangedAt="2026-11-21T08:00:00Z",
        MessageID=None,
    )
    assert (await hooks.post("/webhooks/postmark", json=lift)).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    assert [kind for kind, _ in await outbox_events(db)] == [
        "email.suppressed",
        "email.reactivated",
    ]


@pytest.mark.parametrize("record_type", ["Open", "Click", "SomethingNew"])
async def test_other_record_types_are_acknowledged_and_ignored(
    hooks: httpx.AsyncClient, db: asyncpg.Connection, record_type: str
) -> None:
    answer = await hooks.post(
        "/webhooks/postmark", json={"RecordType": record_type, "MessageID": "x"}
    )
    assert (answer.status_code, answer.json()) == (200, {"status": "ignored"})
    assert await outbox_events(db) == []
    metrics = (await hooks.get("/metrics")).text
    shown = record_type if record_type in ("Open", "Click") else "other"
    assert f'record_type="{shown}"' in metrics


@pytest.mark.parametrize(
    "auth", [None, (WEBHOOK_USER, "wrong-password"), ("someone", WEBHOOK_PASSWORD)]
)
async def test_wrong_or_missing_credentials_are_401(
    notifier_app: FastAPI, db: asyncpg.Connection, auth: tuple[str, str] | None
) -> None:
    async with client_of(notifier_app, auth) as client:
        answer = await client.post("/webhooks/postmark", json=fixture("bounce_hard"))
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"].startswith("Basic")
    assert await db.fetchval("SELECT count(*) FROM bounces") == 0
    assert await outbox_events(db) == []


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"RecordType": "Bounce", ', "application/json", 400),
        (b'["a list"]', "application/json", 400),
        (b'{"RecordType": "Bounce", "ID": 1}', "application/json", 400),
        (
            b'{"RecordType": "Bounce", "ID": "NaN", "Type": "HardBounce", "Email": "a@b.co"}',
            "application/json",
            400,
        ),
        (b'{"RecordType": "Delivery", "Recipient": "a@b.co"}', "application/json", 400),
        (b'{"RecordType": "Bounce"}', "text/plain", 415),
    ],
)
async def test_malformed_bodies_are_refused_and_nothing_is_stored(
    hooks: httpx.AsyncClient,
    db: asyncpg.Connection,
    content: bytes,
    content_type: str,
    status: int,
) -> None:
    answer = await hooks.post(
        "/webhooks/postmark", content=content, headers={"Content-Type": content_type}
    )
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/problem+json"
    assert await db.fetchval("SELECT count(*) FROM bounces") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_receipts") == 0
    assert await outbox_events(db) == []


async def test_a_bounce_that_overtakes_our_commit_still_suppresses(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # Postmark's answer and its bounce can race; the notification may not know its
    # MessageID yet. The bounce is kept, the address suppressed, and the event names the
    # notification from the Metadata the message carried.
    notification, user = uuid.uuid4(), uuid.uuid4()
    body = fixture(
        "bounce_hard",
        ID=555,
        MessageID=str(uuid.uuid4()),
        Metadata={"notification_id": str(notification), "user_id": str(user)},
    )
    assert (await hooks.post("/webhooks/postmark", json=body)).status_code == 200
    assert await db.fetchval("SELECT email FROM suppressions") == "gone@example.net"
    assert await db.fetchval("SELECT notification_id FROM bounces") is None
    [(kind, data)] = await outbox_events(db)
    assert kind == "email.bounced"
    assert (data["notification_id"], data["user_id"]) == (str(notification), str(user))


async def test_webhook_events_match_their_published_schemas(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    for name in ("bounce_hard", "spam_complaint", "delivery", "subscription_change"):
        assert (await hooks.post("/webhooks/postmark", json=fixture(name))).status_code == 200
    lift = fixture("subscription_change", SuppressSending=False, ChangedAt="2026-11-22T00:00:00Z")
    assert (await hooks.post("/webhooks/postmark", json=lift)).status_code == 200

    seen = await assert_outbox_matches_the_catalogue(db)

    assert seen == {
        "email.bounced",
        "email.complained",
        "email.delivered",
        "email.suppressed",
        "email.reactivated",
    }


async def suppression(db: asyncpg.Connection, email: str) -> str | None:
    reason = await db.fetchval("SELECT reason FROM suppressions WHERE email = $1", email.lower())
    return str(reason) if reason is not None else None


async def test_a_subscription_change_older_than_the_suppression_lifts_nothing(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    email = "order@example.com"
    bounce = fixture("bounce_hard", ID=501, Email=email, BouncedAt="2026-11-20T10:00:00Z")
    assert (await hooks.post("/webhooks/postmark", json=bounce)).json() == {"status": "recorded"}

    # Postmark delivers an older reactivation late: it must not undo the newer bounce.
    stale = fixture(
        "subscription_change",
        Recipient=email,
        SuppressSending=False,
        SuppressionReason=None,
        MessageID=None,
        ChangedAt="2026-11-20T09:59:00Z",
    )
    answer = await hooks.post("/webhooks/postmark", json=stale)

    assert (answer.status_code, answer.json()) == (200, {"status": "ignored"})
    assert await suppression(db, email) == "HardBounce"
    assert "email.reactivated" not in [kind for kind, _ in await outbox_events(db)]

    # A newer one lifts it; an older suppression arriving after that changes nothing.
    fresh = {**stale, "ChangedAt": "2026-11-20T10:30:00Z"}
    assert (await hooks.post("/webhooks/postmark", json=fresh)).json() == {"status": "recorded"}
    assert await suppression(db, email) is None
    older = fixture(
        "subscription_change",
        Recipient=email,
        SuppressSending=True,
        SuppressionReason="ManualSuppression",
        ChangedAt="2026-11-20T10:15:00Z",
    )
    assert (await hooks.post("/webhooks/postmark", json=older)).json() == {"status": "ignored"}
    assert await suppression(db, email) is None


async def test_a_spam_complaint_is_neither_lifted_nor_rewritten_by_later_webhooks(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    complaint = fixture("spam_complaint")
    email = complaint["Email"]
    assert (await hooks.post("/webhooks/postmark", json=complaint)).status_code == 200

    later_bounce = fixture(
        "bounce_hard", ID=502, Email=email, BouncedAt="2099-01-01T00:00:00Z", Inactive=True
    )
    assert (await hooks.post("/webhooks/postmark", json=later_bounce)).status_code == 200
    lift = fixture(
        "subscription_change",
        Recipient=email,
        SuppressSending=False,
        SuppressionReason=None,
        MessageID=None,
        ChangedAt="2099-01-02T00:00:00Z",
    )
    answer = await hooks.post("/webhooks/postmark", json=lift)

    assert (answer.status_code, answer.json()) == (200, {"status": "ignored"})
    assert await suppression(db, email) == "SpamComplaint"
    assert "email.reactivated" not in [kind for kind, _ in await outbox_events(db)]


async def test_out_of_order_webhooks_end_in_the_state_of_the_newest(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    email = "late-order@example.com"
    lift = fixture(
        "subscription_change",
        Recipient=email,
        SuppressSending=False,
        SuppressionReason=None,
        MessageID=None,
        ChangedAt="2026-11-20T12:10:00Z",
    )
    older = fixture(
        "subscription_change",
        Recipient=email,
        SuppressSending=True,
        SuppressionReason="ManualSuppression",
        ChangedAt="2026-11-20T12:00:00Z",
    )
    # The lift arrives first (nothing to lift yet), then the older suppression.
    assert (await hooks.post("/webhooks/postmark", json=lift)).json() == {"status": "ignored"}
    assert (await hooks.post("/webhooks/postmark", json=older)).json() == {"status": "ignored"}
    assert await suppression(db, email) is None

    # A spam complaint dated between the two still suppresses, for good.
    complaint = fixture("spam_complaint", ID=503, Email=email, BouncedAt="2026-11-20T12:05:00Z")
    assert (await hooks.post("/webhooks/postmark", json=complaint)).status_code == 200
    assert await suppression(db, email) == "SpamComplaint"


async def test_a_suppression_dated_in_the_future_counts_as_now(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    email = "future@example.com"
    future = fixture(
        "subscription_change",
        Recipient=email,
        SuppressSending=True,
        SuppressionReason="ManualSuppression",
        ChangedAt="9999-12-31T00:00:00Z",
    )
    assert (await hooks.post("/webhooks/postmark", json=future)).json() == {"status": "recorded"}
    changed_at = await db.fetchval("SELECT changed_at FROM suppressions WHERE email = $1", email)
    lift = {**future, "SuppressSending": False, "SuppressionReason": None, "ChangedAt": None}

    answer = await hooks.post("/webhooks/postmark", json=lift)

    assert changed_at.year < 9999
    assert answer.json() == {"status": "recorded"}
    assert await suppression(db, email) is None


@pytest.mark.parametrize("field", ["Details", "Email", "Metadata", "Description"])
async def test_a_nul_anywhere_in_a_bounce_is_stored_not_a_500(
    hooks: httpx.AsyncClient, db: asyncpg.Connection, field: str
) -> None:
    email = f"nul-{field.lower()}@example.com"
    body = fixture("bounce_hard", ID=600 + len(field), Email=email)
    if field == "Metadata":
        body["Metadata"] = {"note\u0000key": "a\u0000b", "notification_id": "x\u0000"}
    elif field == "Email":
        body["Email"] = "nul\u0000" + email
    else:
        body[field] = "diagnostic \u0000 from the MTA"

    answer = await hooks.post("/webhooks/postmark", json=body)
    stored = await db.fetchrow("SELECT email, details, raw FROM bounces")

    assert (answer.status_code, answer.json()) == (200, {"status": "recorded"})
    assert stored is not None
    assert "\u0000" not in stored["raw"]
    assert "\\u0000" not in stored["raw"]
    assert "\ufffd" in stored["raw"]  # the NUL is replaced, visibly, in the raw copy
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 1  # still suppressed


async def test_numbers_and_dates_out_of_range_are_stored_as_far_as_they_can_be(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = fixture(
        "bounce_hard",
        ID=700,
        Email="odd@example.com",
        TypeCode=2**40,
        BouncedAt="0001-01-01T00:00:00+14:00",
    )

    answer = await hooks.post("/webhooks/postmark", json=body)
    stored = await db.fetchrow("SELECT type_code, bounced_at, raw FROM bounces")

    assert (answer.status_code, answer.json()) == (200, {"status": "recorded"})
    assert stored is not None
    assert (stored["type_code"], stored["bounced_at"]) == (None, None)
    raw = json.loads(stored["raw"])
    assert (raw["TypeCode"], raw["BouncedAt"]) == (2**40, "0001-01-01T00:00:00+14:00")
    assert await suppression(db, "odd@example.com") == "HardBounce"


async def test_an_odd_date_on_a_delivery_or_subscription_change_is_never_a_500(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    delivery = fixture("delivery", DeliveredAt="9999-12-31T23:00:00-05:00")
    change = fixture(
        "subscription_change",
        Recipient="odd-change@example.com",
        ChangedAt="0001-01-01T00:00:00+14:00",
    )

    refused = await hooks.post("/webhooks/postmark", json=delivery)
    recorded = await hooks.post("/webhooks/postmark", json=change)

    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert recorded.json() == {"status": "recorded"}
    assert await suppression(db, "odd-change@example.com") == "ManualSuppression"


async def test_deeply_nested_bodies_are_refused_with_a_400(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000  # 400 KB, past the JSON parser's recursion limit
    nested = fixture("bounce_hard", ID=800)
    nested["Metadata"] = {"x": json.loads("[" * 40 + "]" * 40)}

    answers = [
        await hooks.post(
            "/webhooks/postmark", content=deep, headers={"content-type": "application/json"}
        ),
        await hooks.post("/webhooks/postmark", json=nested),
    ]

    assert [a.status_code for a in answers] == [400, 400]
    assert {a.json()["type"] for a in answers} == {"urn:postroom:problem:invalid-webhook"}
    assert await db.fetchval("SELECT count(*) FROM bounces") == 0


async def test_unknown_record_types_are_counted_under_one_label(
    hooks: httpx.AsyncClient, notifier_app: FastAPI
) -> None:
    long_type = "X" * 100_000
    answer = await hooks.post("/webhooks/postmark", json={"RecordType": long_type})
    bounce = fixture("bounce_hard", ID=900, Email="weird@example.com", Type="Z" * 100)
    await hooks.post("/webhooks/postmark", json=bounce)

    async with client_of(notifier_app, None) as anonymous:
        metrics = (await anonymous.get("/metrics")).text

    assert answer.json() == {"status": "ignored"}
    assert "XXXX" not in metrics
    assert "ZZZZ" not in metrics
    assert 'postroom_notifier_webhooks_total{outcome="ignored",record_type="other"} 1.0' in metrics
    assert 'postroom_notifier_bounces_total{type="other"} 1.0' in metrics


async def test_json_that_postgresql_cannot_hold_is_refused_or_cleaned_never_a_500(
    hooks: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    nan = b'{"RecordType": "Bounce", "ID": 1, "Type": "HardBounce", "Email": "a@b.co", "X": NaN}'
    lone = fixture("bounce_hard", ID=950, Email="lone\ud800@example.com", Details="x\udc00y")

    refused = await hooks.post(
        "/webhooks/postmark", content=nan, headers={"content-type": "application/json"}
    )
    stored = await hooks.post(  # json.dumps escapes the lone surrogates as \udXXX
        "/webhooks/postmark",
        content=json.dumps(lone).encode(),
        headers={"content-type": "application/json"},
    )

    assert refused.status_code == 400
    assert stored.json() == {"status": "recorded"}
    raw = await db.fetchval("SELECT raw::text FROM bounces WHERE id = 950")
    assert "\ufffd" in raw
