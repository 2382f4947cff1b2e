"""A new verification link: `POST /v1/users/{id}/verification-emails` and the expired link's
own button, with their limits, and users' locales."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from api.app import create_app
from postroom.tokens import issue_token
from tests.support.settings import API_TOKEN, EMAIL_SECRET, make_api_settings


@asynccontextmanager
async def api(database_url: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_api_settings(database_url, **overrides))
    async with (
        LifespanManager(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as client,
    ):
        yield client


async def register(client: httpx.AsyncClient, **extra: str) -> dict[str, Any]:
    answer = await client.post(
        "/v1/users", json={"email": "ada@example.com", "name": "Ada", **extra}
    )
    assert answer.status_code == 201, answer.text
    user: dict[str, Any] = answer.json()
    return user


async def requests_of(db: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT payload FROM outbox WHERE event_type = 'user.verification_requested' ORDER BY id"
    )
    return [json.loads(row["payload"]) for row in rows]


async def test_a_new_link_is_an_event_for_the_current_address(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client, locale="fr-ca")
    renamed = await client.patch(f"/v1/users/{user['id']}", json={"email": "ada@new.example"})
    assert renamed.status_code == 200

    answer = await client.post(f"/v1/users/{user['id']}/verification-emails")

    assert answer.status_code == 202
    body = answer.json()
    assert (body["user_id"], body["email"]) == (user["id"], "ada@new.example")
    [event] = await requests_of(db)
    assert event["user_id"] == user["id"]
    assert event["email"] == "ada@new.example"
    assert event["locale"] == "fr-CA"  # stored in canonical form
    assert event["name"] == "Ada"


async def test_a_verified_address_gets_no_new_link(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    token = issue_token(EMAIL_SECRET, user_id=uuid.UUID(user["id"]), email=user["email"])
    verified = await client.post("/v1/email-verifications", json={"token": token})
    assert verified.status_code == 200

    answer = await client.post(f"/v1/users/{user['id']}/verification-emails")

    assert answer.status_code == 409
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:postroom:problem:already-verified"
    assert await requests_of(db) == []


async def test_an_unknown_user_is_a_404_and_no_token_a_401(client: httpx.AsyncClient) -> None:
    missing = await client.post(f"/v1/users/{uuid.uuid4()}/verification-emails")
    assert missing.status_code == 404
    client.headers.pop("Authorization")
    anonymous = await client.post(f"/v1/users/{uuid.uuid4()}/verification-emails")
    assert anonymous.status_code == 401


async def test_a_second_link_within_the_interval_is_refused_with_retry_after(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    first = await client.post(f"/v1/users/{user['id']}/verification-emails")
    assert first.status_code == 202

    again = await client.post(f"/v1/users/{user['id']}/verification-emails")

    assert again.status_code == 429
    assert again.json()["type"] == "urn:postroom:problem:too-many-verification-requests"
    assert 55 <= int(again.headers["Retry-After"]) <= 60  # the default: one a minute
    assert len(await requests_of(db)) == 1
    # Once the minute has passed, a new one goes.
    await db.execute(
        "UPDATE verification_requests SET requested_at = requested_at - interval '61 seconds'"
    )
    assert (await client.post(f"/v1/users/{user['id']}/verification-emails")).status_code == 202


async def test_at_most_so_many_links_a_day(database_url: str, db: asyncpg.Connection) -> None:
    async with api(
        database_url, verification_resend_interval=0, verification_resend_daily=3
    ) as client:
        user = await register(client)
        path = f"/v1/users/{user['id']}/verification-emails"
        answers = [(await client.post(path)).status_code for _ in range(4)]
        assert answers == [202, 202, 202, 429]
        # The oldest of the three leaves the day's window first: that is the wait.
        await db.execute(
            "UPDATE verification_requests SET requested_at = now() - interval '23 hours' "
            "WHERE id = (SELECT min(id) FROM verification_requests)"
        )
        refused = await client.post(path)
        assert refused.status_code == 429
        assert 3500 <= int(refused.headers["Retry-After"]) <= 3600
        await db.execute(
            "UPDATE verification_requests SET requested_at = now() - interval '25 hours' "
            "WHERE id = (SELECT min(id) FROM verification_requests)"
        )
        assert (await client.post(path)).status_code == 202
        assert len(await requests_of(db)) == 4
        # What fell out of the day's window is forgotten.
        assert await db.fetchval("SELECT count(*) FROM verification_requests") == 3


async def test_an_idempotency_key_replays_the_first_answer_and_asks_once(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    path = f"/v1/users/{user['id']}/verification-emails"
    first = await client.post(path, headers={"Idempotency-Key": "resend-1"})
    again = await client.post(path, headers={"Idempotency-Key": "resend-1"})

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert len(await requests_of(db)) == 1


async def test_a_deleted_user_takes_the_address_out_of_a_stored_answer(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    path = f"/v1/users/{user['id']}/verification-emails"
    assert (await client.post(path, headers={"Idempotency-Key": "k-1"})).status_code == 202
    assert (await client.delete(f"/v1/users/{user['id']}")).status_code == 204

    replay = await client.post(path, headers={"Idempotency-Key": "k-1"})

    assert replay.status_code == 410
    assert "ada@example.com" not in replay.text
    stored = await db.fetch("SELECT response_body::text AS body FROM idempotency_keys")
    assert all("ada@example.com" not in row["body"] for row in stored)
    assert await db.fetchval("SELECT count(*) FROM verification_requests") == 0


# -- the expired link's page -----------------------------------------------------------------


def expired_token(user: dict[str, Any], *, days: int = 3) -> str:
    return issue_token(
        EMAIL_SECRET,
        user_id=uuid.UUID(user["id"]),
        email=user["email"],
        issued_at=datetime.now(UTC) - timedelta(days=days),
    )


def form_token(page: str, action: str) -> str:
    match = re.search(
        rf'<form method="post" action="{action}">\s*<input type="hidden" name="token" '
        r'value="([^"]+)">',
        page,
    )
    assert match is not None, page
    return match.group(1)


async def test_an_expired_link_offers_a_new_one_and_its_button_sends_it(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    page = await client.get("/verify-email", params={"token": expired_token(user)})
    assert page.status_code == 410
    assert "expired" in page.text
    token = form_token(page.text, "verify-email/resend")

    sent = await client.post("/verify-email/resend", data={"token": token})

    assert sent.status_code == 202
    assert "ada@example.com" in sent.text
    [event] = await requests_of(db)
    assert event["user_id"] == user["id"]
    # Pressed again at once: the page says when to ask again; nothing more is sent.
    again = await client.post("/verify-email/resend", data={"token": token})
    assert again.status_code == 429
    assert again.headers["Retry-After"]
    assert "1 minute" in again.text
    assert len(await requests_of(db)) == 1


async def test_the_resend_button_refuses_forged_ancient_or_superseded_links(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    forged = issue_token(
        "another-" + EMAIL_SECRET, user_id=uuid.UUID(user["id"]), email=user["email"]
    )
    assert (await client.post("/verify-email/resend", data={"token": forged})).status_code == 400
    ancient = expired_token(user, days=40)
    assert (await client.post("/verify-email/resend", data={"token": ancient})).status_code == 410
    old_address = expired_token(user)
    await client.patch(f"/v1/users/{user['id']}", json={"email": "ada@new.example"})
    superseded = await client.post("/verify-email/resend", data={"token": old_address})
    assert superseded.status_code == 410
    assert "no longer uses" in superseded.text
    assert await requests_of(db) == []


# -- locales --------------------------------------------------------------------------------


@pytest.mark.parametrize("locale", ["english", "de_AT", "", "a" * 40, "en US", "../de"])
async def test_a_locale_that_is_not_a_language_tag_is_a_422(
    client: httpx.AsyncClient, db: asyncpg.Connection, locale: str
) -> None:
    answer = await client.post(
        "/v1/users", json={"email": "ada@example.com", "name": "Ada", "locale": locale}
    )
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["loc"][-1] == "locale"
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_a_locale_change_alone_is_an_update_that_names_it(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    assert user["locale"] is None

    changed = await client.patch(f"/v1/users/{user['id']}", json={"locale": "de-at"})

    assert changed.status_code == 200
    assert changed.json()["locale"] == "de-AT"
    rows = await db.fetch("SELECT event_type, payload FROM outbox ORDER BY id")
    assert [row["event_type"] for row in rows] == ["user.registered", "user.updated"]
    update = json.loads(rows[1]["payload"])
    assert (update["changed"], update["locale"]) == (["locale"], "de-AT")
    same = await client.patch(f"/v1/users/{user['id']}", json={"locale": "de-AT"})
    assert same.json()["version"] == changed.json()["version"]  # nothing changed, nothing written


async def test_a_link_too_old_to_resend_from_says_so_and_offers_no_button(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    ancient = expired_token(user, days=40)  # past 48 h and the 30 days' grace

    page = await client.get("/verify-email", params={"token": ancient})
    pressed = await client.post("/verify-email/resend", data={"token": ancient})

    for answer in (page, pressed):
        assert answer.status_code == 410
        assert "too old" in answer.text
        assert "<form" not in answer.text
    assert await requests_of(db) == []


async def test_a_locale_can_be_cleared_with_null(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client, locale="fr")
    cleared = await client.patch(f"/v1/users/{user['id']}", json={"locale": None})
    assert cleared.status_code == 200
    assert cleared.json()["locale"] is None
    untouched = await client.patch(f"/v1/users/{user['id']}", json={"name": "Ada L."})
    assert untouched.json()["locale"] is None
    row = await db.fetchrow(
        "SELECT payload FROM outbox WHERE event_type = 'user.updated' ORDER BY id LIMIT 1"
    )
    assert json.loads(row["payload"])["changed"] == ["locale"]
