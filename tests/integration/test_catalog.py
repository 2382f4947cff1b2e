"""What the services put in the outbox validates against the published JSON Schemas."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg
import httpx
import jsonschema_rs

from postroom.tokens import issue_token
from tests.conftest import EMAIL_SECRET

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events"


async def assert_outbox_matches_the_catalogue(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch("SELECT event_type, payload::text AS payload FROM outbox ORDER BY id")
    assert rows
    for row in rows:
        schema = json.loads((DOCS / f"{row['event_type']}.json").read_text())
        jsonschema_rs.validate(schema, json.loads(row["payload"]))
    return {row["event_type"] for row in rows}


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
