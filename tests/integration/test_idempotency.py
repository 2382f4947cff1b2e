"""`Idempotency-Key` on POST: a replay answers the same and writes nothing."""

import asyncio

import asyncpg
import httpx
import pytest


async def test_a_replay_returns_the_first_answer_and_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = {"email": "ada@example.com", "name": "Ada"}
    headers = {"Idempotency-Key": "signup-42"}
    first = await client.post("/v1/users", json=body, headers=headers)
    assert first.status_code == 201
    before = await db.fetchval("SELECT count(*) FROM outbox")

    # Same request, keys in another order: still the same request.
    replay = await client.post(
        "/v1/users", json={"name": "Ada", "email": "ada@example.com"}, headers=headers
    )

    assert replay.status_code == 201
    assert replay.json() == first.json()
    assert replay.headers["location"] == first.headers["location"]
    assert replay.headers["idempotent-replayed"] == "true"
    assert await db.fetchval("SELECT count(*) FROM users") == 1
    assert await db.fetchval("SELECT count(*) FROM outbox") == before == 1


async def test_the_same_key_with_another_body_is_422(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    headers = {"Idempotency-Key": "signup-43"}
    first = await client.post(
        "/v1/users", json={"email": "ada@example.com", "name": "Ada"}, headers=headers
    )
    assert first.status_code == 201

    other = await client.post(
        "/v1/users", json={"email": "bob@example.com", "name": "Bob"}, headers=headers
    )

    assert other.status_code == 422
    assert other.json()["type"] == "urn:postroom:problem:idempotency-key-reused"
    assert await db.fetchval("SELECT count(*) FROM users") == 1
    assert await db.fetchval("SELECT count(*) FROM outbox") == 1


async def test_a_failed_request_does_not_burn_its_key(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    taken = await client.post("/v1/users", json={"email": "ada@example.com", "name": "Ada"})
    assert taken.status_code == 201
    headers = {"Idempotency-Key": "retry-me"}
    conflict = await client.post(
        "/v1/users", json={"email": "ADA@example.com", "name": "Ada 2"}, headers=headers
    )
    assert conflict.status_code == 409
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0


async def test_concurrent_requests_with_one_key_create_one_user(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = {"email": "race@example.com", "name": "Race"}
    headers = {"Idempotency-Key": "same-moment"}
    answers = await asyncio.gather(
        *(client.post("/v1/users", json=body, headers=headers) for _ in range(8))
    )
    assert {answer.status_code for answer in answers} == {201}
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert await db.fetchval("SELECT count(*) FROM users") == 1
    assert await db.fetchval("SELECT count(*) FROM outbox") == 1


async def test_keys_are_per_token(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    # The key space belongs to the caller: another client's key cannot replay our answer.
    headers = {"Idempotency-Key": "k"}
    await client.post("/v1/users", json={"email": "a@example.com", "name": "A"}, headers=headers)
    rows = await db.fetch("SELECT principal FROM idempotency_keys")
    assert len(rows) == 1
    assert "test-token" not in rows[0]["principal"]  # a digest, never the token itself


@pytest.mark.parametrize("key", ["k" * 256, "two words", ""])
async def test_an_unusable_key_is_422(
    client: httpx.AsyncClient, db: asyncpg.Connection, key: str
) -> None:
    answer = await client.post(
        "/v1/users",
        json={"email": "ada@example.com", "name": "Ada"},
        headers={"Idempotency-Key": key},
    )
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["type"] == "urn:postroom:problem:validation-error"
    assert problem["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await db.fetchval("SELECT count(*) FROM users") == 0
