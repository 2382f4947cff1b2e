"""Email verification with signed, expiring tokens bound to one address."""

import html
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest

from postroom.tokens import issue_token
from tests.support.settings import EMAIL_SECRET


async def register(client: httpx.AsyncClient) -> dict[str, Any]:
    answer = await client.post("/v1/users", json={"email": "ada@example.com", "name": "Ada"})
    assert answer.status_code == 201
    user: dict[str, Any] = answer.json()
    return user


def token_for(user: dict[str, Any], **kwargs: Any) -> str:
    return issue_token(
        EMAIL_SECRET,
        user_id=uuid.UUID(user["id"]),
        email=kwargs.pop("email", user["email"]),
        **kwargs,
    )


async def event_types(db: asyncpg.Connection) -> list[str]:
    return [
        row["event_type"] for row in await db.fetch("SELECT event_type FROM outbox ORDER BY id")
    ]


@pytest.fixture
def anonymous(client: httpx.AsyncClient) -> httpx.AsyncClient:
    client.headers.pop("Authorization")  # the signed token is the only credential
    return client


async def test_a_valid_token_verifies_once(
    anonymous: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    anonymous.headers["Authorization"] = "Bearer test-token-0123456789abcdef"
    user = await register(anonymous)
    anonymous.headers.pop("Authorization")

    answer = await anonymous.post("/v1/email-verifications", json={"token": token_for(user)})

    assert answer.status_code == 200
    body = answer.json()
    assert body["email_verified"] is True
    assert body["version"] == 2
    assert await event_types(db) == ["user.registered", "user.email_verified"]
    payload = json.loads(await db.fetchval("SELECT payload FROM outbox ORDER BY id DESC LIMIT 1"))
    assert payload["email"] == "ada@example.com"
    assert "token" not in json.dumps(payload)

    # Clicking the link twice is harmless: same answer, no second event.
    again = await anonymous.post("/v1/email-verifications", json={"token": token_for(user)})
    assert again.status_code == 200
    assert again.json()["version"] == 2
    assert await event_types(db) == ["user.registered", "user.email_verified"]


async def test_an_expired_token_is_410(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    user = await register(client)
    old = token_for(user, issued_at=datetime.now(UTC) - timedelta(days=3))
    answer = await client.post("/v1/email-verifications", json={"token": old})
    assert answer.status_code == 410
    assert answer.json()["type"] == "urn:postroom:problem:token-expired"
    assert await event_types(db) == ["user.registered"]


async def test_a_token_for_the_address_before_a_change_is_410(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    stale = token_for(user)
    changed = await client.patch(f"/v1/users/{user['id']}", json={"email": "ada@new.example"})
    assert changed.status_code == 200

    answer = await client.post("/v1/email-verifications", json={"token": stale})

    assert answer.status_code == 410
    assert answer.json()["type"] == "urn:postroom:problem:token-superseded"
    assert (await client.get(f"/v1/users/{user['id']}")).json()["email_verified"] is False
    assert "user.email_verified" not in await event_types(db)


async def test_a_token_of_a_deleted_user_is_410(client: httpx.AsyncClient) -> None:
    user = await register(client)
    token = token_for(user)
    assert (await client.delete(f"/v1/users/{user['id']}")).status_code == 204
    answer = await client.post("/v1/email-verifications", json={"token": token})
    assert answer.status_code == 410


async def test_a_tampered_token_is_400(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    user = await register(client)
    token = token_for(user)
    forged = issue_token(
        "not-the-secret-" + EMAIL_SECRET, user_id=uuid.UUID(user["id"]), email=user["email"]
    )
    for bad in (token[:-3] + "abc", forged, "garbage"):
        answer = await client.post("/v1/email-verifications", json={"token": bad})
        assert answer.status_code == 400
        assert answer.json()["type"] == "urn:postroom:problem:token-invalid"
    assert await event_types(db) == ["user.registered"]


async def test_the_link_page_changes_nothing_and_its_button_verifies(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = await register(client)
    token = token_for(user)

    # A mail gateway that opens every link, twice: nothing is verified.
    pages = [await client.get("/verify-email", params={"token": token}) for _ in range(2)]
    events_after_get = await event_types(db)
    verified_after_get = await db.fetchval("SELECT email_verified_at FROM users")
    form = pages[0].text
    action = re.search(r'<form method="post" action="([^"]+)"', form)
    hidden = re.search(r'<input type="hidden" name="token" value="([^"]+)"', form)
    assert action is not None
    assert hidden is not None

    # The person presses the button: the form posts the token back.
    done = await client.post(
        f"/{action.group(1)}",
        content=urlencode({"token": html.unescape(hidden.group(1))}),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )

    assert [page.status_code for page in pages] == [200, 200]
    assert pages[0].headers["content-type"].startswith("text/html")
    assert "Verify ada@example.com" in form
    assert pages[0].headers["cache-control"] == "no-store"
    assert "form-action 'self'" in pages[0].headers["content-security-policy"]
    assert events_after_get == ["user.registered"]
    assert verified_after_get is None
    assert done.status_code == 200
    assert "ada@example.com is now verified" in done.text
    assert await event_types(db) == ["user.registered", "user.email_verified"]


@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [
        ("", 400, "not valid"),
        ("token=garbage", 400, "not valid"),
        ("token=" + "x" * 5000, 400, "not valid"),
        ("a=1&b=2&c=3&d=4&e=5&token=x", 400, "not valid"),
    ],
    ids=["empty", "garbage", "long", "many-fields"],
)
async def test_the_button_explains_bad_posts_and_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: str, status: int, phrase: str
) -> None:
    await register(client)
    answer = await client.post(
        "/verify-email",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == status
    assert phrase in answer.text
    assert await event_types(db) == ["user.registered"]


@pytest.mark.parametrize(
    ("params", "status", "phrase"),
    [
        ({}, 400, "not valid"),
        ({"token": "garbage"}, 400, "not valid"),
        ({"token": "x" * 5000}, 400, "not valid"),
    ],
)
async def test_the_link_page_explains_bad_links(
    client: httpx.AsyncClient, params: dict[str, str], status: int, phrase: str
) -> None:
    page = await client.get("/verify-email", params=params)
    assert page.status_code == status
    assert page.headers["content-type"].startswith("text/html")
    assert phrase in page.text


async def test_the_link_page_explains_expired_links(client: httpx.AsyncClient) -> None:
    user = await register(client)
    old = token_for(user, issued_at=datetime.now(UTC) - timedelta(days=3))
    page = await client.get("/verify-email", params={"token": old})
    assert page.status_code == 410
    assert "expired" in page.text
