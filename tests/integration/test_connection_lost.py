"""A database connection lost in the middle of a request's transaction is a 503 the client
may retry, like a database that is away, not a 500."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_a_connection_lost_inside_a_transaction_answers_503(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str, method: str
) -> None:
    created = await client.post(
        "/v1/users", json={"email": f"{uuid.uuid4().hex[:8]}@example.com", "name": "Ada"}
    )
    user_id = created.json()["id"]
    # Another session holds the user's row, so the request waits inside its transaction
    # (DELETE), or on the row under its lock (PATCH, after its optimistic try).
    holder = await asyncpg.connect(database_url)
    held = holder.transaction()
    await held.start()
    await holder.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", uuid.UUID(user_id))
    try:
        if method == "PATCH":
            request = asyncio.create_task(
                client.patch(f"/v1/users/{user_id}", json={"name": "Ada Lovelace"})
            )
        else:
            request = asyncio.create_task(client.delete(f"/v1/users/{user_id}"))
        async with asyncio.timeout(20):
            while not (
                waiting := await db.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'postroom-api'"
                    " AND wait_event_type = 'Lock'"
                )
            ):
                await asyncio.sleep(0.05)
        # The server goes away under it, as a failover or a restart would do.
        await db.execute("SELECT pg_terminate_backend($1)", waiting[0]["pid"])
        answer = await request
    finally:
        await held.rollback()
        await holder.close()

    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["retry-after"] == "1"
    # Nothing was written: the user is as it was.
    assert (await client.get(f"/v1/users/{user_id}")).json()["name"] == "Ada"
