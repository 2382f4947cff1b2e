"""Changing and deleting users: each change commits with its events, in the user's order."""

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import httpx


async def register(client: httpx.AsyncClient, email: str = "ada@example.com") -> dict[str, Any]:
    answer = await client.post("/v1/users", json={"email": email, "name": "Ada"})
    assert answer.status_code == 201
    user: dict[str, Any] = answer.json()
    return user


async def events_of(db: asyncpg.Connection, user_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = await db.fetch(
        "SELECT event_type, payload FROM outbox WHERE aggregate_id = $1 ORDER BY id", user_id
    )
    return [(row["event_type"], json.loads(row["payload"])) for row in rows]


async def test_changing_the_email_announces_old_and_new_and_resets_verification(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    await db.execute(
        "UPDATE users SET email_verified_at = now() WHERE id = $1", uuid.UUID(user["id"])
    )

    answer = await client.patch(f"/v1/users/{user['id']}", json={"email": "ada@new.example"})

    assert answer.status_code == 200
    changed = answer.json()
    assert changed["email"] == "ada@new.example"
    assert changed["email_verified"] is False
    assert changed["email_verified_at"] is None
    assert changed["version"] == 2
    events = await events_of(db, user["id"])
    assert [kind for kind, _ in events] == [
        "user.registered",
        "user.updated",
        "user.email_changed",
    ]
    assert events[1][1]["changed"] == ["email"]
    assert events[2][1] == {
        "user_id": user["id"],
        "version": 2,
        "old_email": "ada@example.com",
        "new_email": "ada@new.example",
        "name": "Ada",
        "locale": None,
    }


async def test_a_name_change_is_only_an_update(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    answer = await client.patch(f"/v1/users/{user['id']}", json={"name": "Ada King"})
    assert answer.status_code == 200
    assert answer.json()["name"] == "Ada King"
    assert [kind for kind, _ in await events_of(db, user["id"])] == [
        "user.registered",
        "user.updated",
    ]


async def test_a_patch_that_changes_nothing_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    for body in ({}, {"name": "Ada"}, {"email": "ada@example.com"}):
        answer = await client.patch(f"/v1/users/{user['id']}", json=body)
        assert answer.status_code == 200
        assert answer.json()["version"] == 1
    assert len(await events_of(db, user["id"])) == 1


async def test_a_case_only_email_change_keeps_verification(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    await db.execute(
        "UPDATE users SET email_verified_at = now() WHERE id = $1", uuid.UUID(user["id"])
    )
    answer = await client.patch(f"/v1/users/{user['id']}", json={"email": "ADA@example.com"})
    assert answer.status_code == 200
    assert answer.json()["email"] == "ADA@example.com"
    assert answer.json()["email_verified"] is True  # the same mailbox, still verified
    assert [kind for kind, _ in await events_of(db, user["id"])] == [
        "user.registered",
        "user.updated",
    ]


async def test_taking_another_users_address_is_409(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await register(client, "first@example.com")
    second = await register(client, "second@example.com")
    answer = await client.patch(f"/v1/users/{second['id']}", json={"email": "FIRST@example.com"})
    assert answer.status_code == 409
    assert answer.json()["type"] == "urn:postroom:problem:email-taken"
    assert len(await events_of(db, second["id"])) == 1
    assert (await client.get(f"/v1/users/{second['id']}")).json()["email"] == "second@example.com"


async def test_null_is_not_a_value(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    user = await register(client)
    answer = await client.patch(f"/v1/users/{user['id']}", json={"name": None})
    assert answer.status_code == 422
    assert len(await events_of(db, user["id"])) == 1


async def test_patching_an_unknown_user_is_404(client: httpx.AsyncClient) -> None:
    answer = await client.patch(f"/v1/users/{uuid.uuid4()}", json={"name": "x"})
    assert answer.status_code == 404
    assert answer.json()["type"] == "urn:postroom:problem:user-not-found"


async def test_concurrent_patches_leave_events_in_version_order(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    answers = await asyncio.gather(
        *(client.patch(f"/v1/users/{user['id']}", json={"name": f"Name {n}"}) for n in range(50))
    )
    assert {answer.status_code for answer in answers} == {200}
    assert sorted(answer.json()["version"] for answer in answers) == list(range(2, 52))

    rows = await db.fetch(
        "SELECT id, (payload->>'version')::int AS version FROM outbox "
        "WHERE aggregate_id = $1 AND event_type = 'user.updated' ORDER BY id",
        user["id"],
    )
    assert [row["version"] for row in rows] == list(range(2, 52))


async def test_delete_announces_and_then_the_user_is_gone(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)

    answer = await client.delete(f"/v1/users/{user['id']}")

    assert answer.status_code == 204
    assert answer.content == b""
    events = await events_of(db, user["id"])
    assert events[-1][0] == "user.deleted"
    assert events[-1][1]["email"] == "ada@example.com"
    assert events[-1][1]["version"] == 2
    assert (await client.get(f"/v1/users/{user['id']}")).status_code == 404
    again = await client.delete(f"/v1/users/{user['id']}")
    assert again.status_code == 404
    assert len(await events_of(db, user["id"])) == 2
    # The address is free again.
    assert (
        await client.post("/v1/users", json={"email": "ada@example.com", "name": "A"})
    ).status_code == 201


async def test_a_deletion_erases_every_bounce_of_the_users_emails_whatever_address_it_names(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Bounces are linked to a user's emails in several ways besides the address they
    report: the notification, its MessageID (or one accepted late), the user id Postmark
    echoed in Metadata, an address the user had before. Each is erased; a bounce of another
    user's email to an address this user once had is not theirs and stays."""
    user = await register(client, "now@example.com")
    user_id = uuid.UUID(user["id"])
    other = await register(client, "other@example.com")
    before, other_key = "before@example.com", "spelt.otherwise@example.com"
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    for notification, owner, recipient, message, late in (
        (mine, user_id, before, "m-mine", ["m-late"]),
        (theirs, uuid.UUID(other["id"]), before, "m-theirs", []),
    ):
        await db.execute(
            """
            INSERT INTO notifications (id, event_id, event_type, user_id, template, recipient,
                                       recipient_key, status, message_id, late_message_ids)
            VALUES ($1, $2, 'user.registered', $3, 'welcome', $4, $4, 'sent', $5, $6)
            """,
            notification,
            uuid.uuid4(),
            owner,
            recipient,
            message,
            late,
        )
    bounces = {
        1: (before, "m-mine", None, {}),  # linked by MessageID only
        2: (other_key, None, mine, {}),  # by notification, reporting another spelling
        3: (other_key, "m-late", None, {}),  # a late acceptance's MessageID
        4: (other_key, "m-unknown", None, {"Metadata": {"user_id": str(user_id)}}),
        5: (before, None, None, {}),  # an address the user had before
        6: (before, "m-theirs", theirs, {}),  # another user's email to that address
    }
    for bounce_id, (email, message, notification, extra) in bounces.items():
        await db.execute(
            """
            INSERT INTO bounces (id, record_type, type, email, email_key, message_id,
                                 notification_id, inactive, can_activate, details, raw)
            VALUES ($1, 'Bounce', 'HardBounce', $2, $2, $3, $4, true, true, $2, $5::jsonb)
            """,
            bounce_id,
            email,
            message,
            notification,
            json.dumps({"Email": email, **extra}),
        )

    assert (await client.delete(f"/v1/users/{user_id}")).status_code == 204

    rows = await db.fetch("SELECT id, email, details, raw::text AS raw FROM bounces")
    showing = {
        r["id"] for r in rows if any("@" in (r[c] or "") for c in ("email", "details", "raw"))
    }
    assert showing == {6}


async def test_read_returns_the_user(client: httpx.AsyncClient) -> None:
    user = await register(client)
    answer = await client.get(f"/v1/users/{user['id']}")
    assert answer.status_code == 200
    assert answer.json() == user


async def test_a_deleted_user_is_erased_and_a_replayed_creation_shows_nothing_of_them(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = {"email": "Erase.Me@example.com", "name": "Erase Me"}
    key = {"Idempotency-Key": f"create-{uuid.uuid4()}"}
    created = await client.post("/v1/users", json=body, headers=key)
    user_id = uuid.UUID(created.json()["id"])
    # What the notifier and Postmark's webhooks had stored about the address by then.
    sent_id = uuid.uuid4()
    await db.execute(
        """
        INSERT INTO notifications (id, event_id, event_type, user_id, template, recipient,
                                   recipient_key, status, message_id, attempts, last_error,
                                   source)
        VALUES ($1, $2, 'user.registered', $3, 'welcome', 'Erase.Me@example.com',
                'erase.me@example.com', 'failed',
                'm-1', 1, 'ErrorCode 300: Invalid ''To'' address: Erase.Me@example.com',
                '{"value": "Erase Me"}')
        """,
        sent_id,
        uuid.uuid4(),
        user_id,
    )
    await db.execute(
        """
        INSERT INTO bounces (id, record_type, type, email, email_key, message_id, inactive,
                             can_activate, details, raw)
        VALUES (42, 'Bounce', 'HardBounce', 'erase.me@example.com', 'erase.me@example.com',
                'm-1', true, true,
                'smtp; 550 erase.me@example.com unknown', '{"Email": "erase.me@example.com"}')
        """
    )

    deleted = await client.delete(f"/v1/users/{user_id}")
    replayed = await client.post("/v1/users", json=body, headers=key)
    notification = await db.fetchrow("SELECT * FROM notifications WHERE id = $1", sent_id)
    bounce = await db.fetchrow("SELECT email, details, raw FROM bounces WHERE id = 42")
    stored = await db.fetch("SELECT response_body::text AS body FROM idempotency_keys")

    assert deleted.status_code == 204
    assert replayed.status_code == 410
    assert replayed.headers["content-type"] == "application/problem+json"
    assert replayed.json()["type"] == "urn:postroom:problem:user-deleted"
    for text in (replayed.text, *(row["body"] for row in stored)):
        assert "erase" not in text.lower()
    assert await db.fetchval("SELECT count(*) FROM users") == 0  # not created again
    assert notification is not None
    assert (notification["recipient"], notification["source"]) == ("", None)
    assert "erase.me" not in notification["last_error"].lower()
    assert notification["user_id"] == user_id  # the pseudonymous id stays for operators
    assert bounce is not None
    assert (bounce["email"], bounce["details"], json.loads(bounce["raw"])) == ("", None, {})
