"""What the services put in the outbox validates against the published JSON Schemas."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from postroom.tokens import issue_token
from tests.support.catalog import assert_outbox_matches_the_catalogue
from tests.support.settings import EMAIL_SECRET


async def test_user_events_match_their_schemas(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    user = (await client.post("/v1/users", json={"email": "s@example.com", "name": "S"})).json()
    await client.patch(f"/v1/users/{user['id']}", json={"email": "t@example.com"})
    token = issue_token(EMAIL_SECRET, user_id=uuid.UUID(user["id"]), email="t@example.com")
    await client.post("/v1/email-verifications", json={"token": token})
    await client.delete(f"/v1/users/{user['id']}")

    seen = await assert_outbox_matches_the_catalogue(db)

    assert seen == {
        "user.registered",
        "user.updated",
        "user.email_changed",
        "user.email_verified",
        "user.deleted",
    }
