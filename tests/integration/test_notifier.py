"""The notifier end to end: api -> outbox -> relay -> Kafka -> notifier -> Postmark sandbox."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from html import unescape
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from postroom import events
from tests.support.catalog import assert_outbox_matches_the_catalogue
from tests.support.kafka import read_topic
from tests.support.names import address
from tests.support.postmark import Sandbox
from tests.support.stack import running_stack

pytestmark = pytest.mark.kafka


async def test_registering_sends_one_welcome_email_whose_link_verifies(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    email = address("welcome")
    async with running_stack(database_url, kafka_bootstrap, sandbox) as stack:
        created = await stack.api.post(
            "/v1/users", json={"email": email, "name": "<script>alert(1)</script>"}
        )
        user_id = created.json()["id"]
        [message] = await stack.wait_messages(email)
        sent = await stack.wait_status(email, "sent")
        await asyncio.sleep(0.5)  # anything extra would arrive by now
        assert len(await stack.messages(email)) == 1

        assert message["To"] == email
        assert message["From"] == "Postroom <hello@postroom.test>"
        assert message["Tag"] == "welcome"
        assert message["MessageStream"] == "outbound"
        assert message["Metadata"]["user_id"] == user_id
        assert message["Metadata"]["notification_id"] == sent[0]["id"]
        assert sent[0]["message_id"] == message["MessageID"]
        assert "<script>alert(1)</script>" not in message["HtmlBody"]
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in message["HtmlBody"]
        assert "<script>alert(1)</script>" in message["TextBody"]  # plain text needs no escaping

        link = next(
            word for word in message["TextBody"].split() if word.startswith("http://testserver/")
        )
        assert unescape(link) in unescape(message["HtmlBody"])
        token = parse_qs(urlsplit(link).query)["token"][0]
        page = await stack.api.get("/verify-email", params={"token": token})
        assert page.status_code == 200
        pressed = await stack.api.post(
            "/verify-email",
            data={"token": token},
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert pressed.status_code == 200
        user = await stack.api.get(f"/v1/users/{user_id}")
        assert user.json()["email_verified"] is True

        # email.sent went out through the outbox, keyed by the address, with no token in it.
        sent_events = await read_topic(
            kafka_bootstrap, stack.relay_settings.topic("email"), expect=1
        )
    assert [r.headers["ce_type"] for r in sent_events] == ["email.sent"]
    assert sent_events[0].key == email.lower()
    assert sent_events[0].value["message_id"] == message["MessageID"]
    assert token not in json.dumps(sent_events[0].value)
    assert token not in json.dumps(
        [dict(r) for r in await db.fetch("SELECT payload FROM outbox")], default=str
    )


async def test_the_same_event_twice_sends_one_email(
    database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    email = address("twice")
    async with running_stack(database_url, kafka_bootstrap, sandbox) as stack:
        await stack.api.post("/v1/users", json={"email": email, "name": "Twice"})
        await stack.wait_status(email, "sent")
        [record] = await read_topic(kafka_bootstrap, stack.settings.topic("user"), expect=1)
        # The relay may publish a row again after a crash; replay that here.
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                stack.settings.topic("user"),
                value=json.dumps(record.value).encode(),
                key=record.key.encode(),
                headers=[(k, v.encode()) for k, v in record.headers.items()],
            )
        finally:
            await producer.stop()
        await asyncio.sleep(1.0)  # the notifier had time to handle the repeat
        assert len(await stack.messages(email)) == 1
        assert len(await stack.notifications(email=email)) == 1


async def test_an_unreadable_event_goes_to_the_dlq_and_the_next_is_sent(
    database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    email = address("after-dlq")
    async with running_stack(database_url, kafka_bootstrap, sandbox) as stack:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                stack.settings.topic("user"),
                value=b"{not json",
                key=b"k",
                headers=[("ce_id", str(uuid.uuid4()).encode()), ("ce_type", b"user.registered")],
            )
        finally:
            await producer.stop()
        await stack.api.post("/v1/users", json={"email": email, "name": "Next"})
        assert len(await stack.wait_messages(email)) == 1
        dead = await read_topic(kafka_bootstrap, stack.settings.topic("notifier.dlq"), expect=1)
    assert len(dead) == 1
    assert dead[0].headers["dlq_reason"] == "unreadable"
    assert dead[0].headers["dlq_topic"] == stack.settings.topic("user")


async def test_inactive_recipients_are_suppressed_and_never_sent_to(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    email = (
        "hardbounce@bounce-testing.postmarkapp.com"  # Postmark's (and the sandbox's) test address
    )
    async with running_stack(database_url, kafka_bootstrap, sandbox) as stack:
        await stack.sandbox.delete("/api/messages")  # a clean slate: the address is shared
        first = await stack.api.post("/v1/users", json={"email": email, "name": "Bouncy"})
        await stack.wait_status(email, "sent")
        # The sandbox bounced it and marked the address inactive; the goodbye meets a 406.
        user_id = first.json()["id"]
        assert (await stack.api.delete(f"/v1/users/{user_id}")).status_code == 204
        deadline = time.monotonic() + 20
        while not (goodbyes := await stack.notifications(user_id=user_id, status="suppressed")):
            assert time.monotonic() < deadline, "the goodbye never settled"
            await asyncio.sleep(0.05)
        [suppressed] = goodbyes
        assert suppressed["template"] == "goodbye"
        assert "inactive" in suppressed["last_error"].lower()
        # The user is deleted: once final, their notifications keep ids, not the address.
        erased = await stack.notifications(user_id=user_id)
        assert {n["recipient"] for n in erased} == {""}
        listed = (await stack.notifier.get("/v1/suppressions")).json()["items"]
        assert [s["email"] for s in listed] == [email]

        calls_before = (await stack.sandbox.get("/api/stats")).json()["calls"]
        again = await stack.api.post("/v1/users", json={"email": email, "name": "Again"})
        assert again.status_code == 201
        [again_suppressed] = await stack.wait_status(email, "suppressed")
        assert again_suppressed["template"] == "welcome"
        assert (await stack.sandbox.get("/api/stats")).json()["calls"] == calls_before
        assert len(await stack.messages(email)) == 1  # only the first welcome ever went out

        email_events = await read_topic(
            kafka_bootstrap, stack.relay_settings.topic("email"), expect=3
        )
    assert "email.suppressed" in await assert_outbox_matches_the_catalogue(db)
    assert [r.headers["ce_type"] for r in email_events] == [
        "email.sent",
        "email.suppressed",
        "email.suppressed",
    ]


async def test_staging_sends_only_to_the_allowlist(
    database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    allowed, other = address("allowed"), address("other")
    async with running_stack(
        database_url,
        kafka_bootstrap,
        sandbox,
        app_env="staging",
        staging_allowed_recipients=(allowed,),
        notifier_search_settle=6.0,  # outside development: longer than POSTMARK_TIMEOUT
    ) as stack:
        await stack.api.post("/v1/users", json={"email": other, "name": "Other"})
        await stack.api.post("/v1/users", json={"email": allowed, "name": "Allowed"})
        assert len(await stack.wait_messages(allowed)) == 1
        [blocked] = await stack.wait_status(other, "suppressed")
        assert "STAGING_ALLOWED_RECIPIENTS" in blocked["last_error"]
        assert await stack.messages(other) == []


async def test_an_invalid_recipient_fails_at_once_and_the_batch_goes_on(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    good = [address(f"batch{n}") for n in range(3)]
    async with running_stack(database_url, kafka_bootstrap, sandbox) as stack:
        await stack.wait_consuming()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for recipient in [good[0], "not-an-address@@example..com", good[1], good[2]]:
                data = events.UserRegistered(
                    user_id=uuid.uuid4(),
                    version=1,
                    email=recipient,
                    name="B",
                    registered_at=datetime.now(UTC),
                )
                await producer.send(
                    stack.settings.topic("user"),
                    value=data.model_dump_json().encode(),
                    key=b"same-key",  # one partition, so they travel in one batch call
                    headers=[
                        ("ce_id", str(uuid.uuid4()).encode()),
                        ("ce_type", b"user.registered"),
                    ],
                )
            await producer.flush()
        finally:
            await producer.stop()
        for recipient in good:
            assert len(await stack.wait_messages(recipient)) == 1
        [failed] = await stack.wait_status("not-an-address@@example..com", "failed")
        assert "300" in failed["last_error"]
        assert failed["attempts"] == 1
    # What the notifier announced matches the published schemas.
    assert await assert_outbox_matches_the_catalogue(db) == {"email.sent", "email.failed"}


async def test_notifications_api_needs_the_token(
    database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    async with running_stack(database_url, kafka_bootstrap, sandbox) as stack:
        stack.notifier.headers.pop("Authorization")
        for path in ("/v1/notifications", f"/v1/notifications/{uuid.uuid4()}", "/v1/suppressions"):
            answer = await stack.notifier.get(path)
            assert answer.status_code == 401
            assert answer.headers["content-type"] == "application/problem+json"
        stack.notifier.headers["Authorization"] = "Bearer test-token-0123456789abcdef"
        missing = await stack.notifier.get(f"/v1/notifications/{uuid.uuid4()}")
        assert missing.status_code == 404
        assert (await stack.notifier.get("/readyz")).status_code in (200, 503)
