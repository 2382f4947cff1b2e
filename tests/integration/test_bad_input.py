"""Bad input gets the right 4xx problem and writes nothing."""

import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from tests.support.settings import API_TOKEN


async def assert_nothing_written(db: asyncpg.Connection) -> None:
    assert await db.fetchval("SELECT count(*) FROM users") == 0
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0


def assert_problem(answer: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem: dict[str, object] = answer.json()
    assert problem["type"] == f"urn:postroom:problem:{slug}"
    assert problem["status"] == status
    assert "Traceback" not in answer.text
    return problem


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-address", "name": "Ada"}, "email"),
        ({"email": "ada@", "name": "Ada"}, "email"),
        ({"email": "a" * 250 + "@example.com", "name": "Ada"}, "email"),
        ({"email": "ada@example.com", "name": "x" * 201}, "name"),
        ({"email": "ada@example.com", "name": "   "}, "name"),
        ({"email": "ada@example.com"}, "name"),
        ({"email": "ada@example.com", "name": "Ada", "is_admin": True}, "is_admin"),
        ({"email": 42, "name": "Ada"}, "email"),
        # PostgreSQL refuses NUL in text: a 422 naming the field, never a 500.
        ({"email": "ada@example.com", "name": "a\u0000b"}, "name"),
        ({"email": "ada@example.com", "name": "Ada\nBcc: x@example.com"}, "name"),
        ({"email": "ada@example.com", "name": "Ada\u001b[31m"}, "name"),
        ({"email": "ada\u0000@example.com", "name": "Ada"}, "email"),
        ({"email": "ada@example.com", "name": "lone \ud800 surrogate"}, "name"),
    ],
)
async def test_invalid_bodies_are_422_with_the_field_named(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: dict[str, object], field: str
) -> None:
    # json.dumps escapes what UTF-8 cannot carry (lone surrogates) as \udXXX, as a client may.
    answer = await client.post(
        "/v1/users", content=json.dumps(body), headers={"content-type": "application/json"}
    )

    problem = assert_problem(answer, 422, "validation-error")
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert any(error["loc"][-1] == field for error in errors)
    await assert_nothing_written(db)


async def test_rejected_values_are_not_echoed_back(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    answer = await client.post("/v1/users", json={"email": "hunter2-secret", "name": "Ada"})
    assert_problem(answer, 422, "validation-error")
    assert "hunter2-secret" not in answer.text


async def test_malformed_json_is_422(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    answer = await client.post(
        "/v1/users", content=b'{"email": "a@b.co",', headers={"Content-Type": "application/json"}
    )
    assert_problem(answer, 422, "validation-error")
    await assert_nothing_written(db)


async def test_an_oversized_body_is_413(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    body = b'{"email": "ada@example.com", "name": "' + b"x" * 70_000 + b'"}'
    answer = await client.post(
        "/v1/users", content=body, headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(answer, 413, "body-too-large")
    assert "65536" in str(problem["detail"])
    await assert_nothing_written(db)


async def test_an_oversized_streamed_body_is_413(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "ada@example.com", "name": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}'

    # No Content-Length: the limit is enforced while the body streams in.
    answer = await client.post(
        "/v1/users", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_problem(answer, 413, "body-too-large")
    await assert_nothing_written(db)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-0000000000", f"Basic {API_TOKEN}", "Bearer", f"Bearer {API_TOKEN}x"],
)
async def test_missing_or_wrong_tokens_are_401(
    client: httpx.AsyncClient, db: asyncpg.Connection, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    client.headers.pop("Authorization")
    answer = await client.post(
        "/v1/users", json={"email": "ada@example.com", "name": "Ada"}, headers=headers
    )
    assert_problem(answer, 401, "unauthorized")
    assert answer.headers["www-authenticate"] == "Bearer"
    await assert_nothing_written(db)


async def test_every_v1_user_route_needs_the_token(client: httpx.AsyncClient) -> None:
    client.headers.pop("Authorization")
    some_id = "00000000-0000-4000-8000-000000000000"
    for method, path in [
        ("GET", f"/v1/users/{some_id}"),
        ("PATCH", f"/v1/users/{some_id}"),
        ("DELETE", f"/v1/users/{some_id}"),
    ]:
        answer = await client.request(method, path, json={"name": "x"})
        assert_problem(answer, 401, "unauthorized")


async def test_a_malformed_user_id_is_422(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/users/not-a-uuid")
    assert_problem(answer, 422, "validation-error")


async def test_an_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nothing-here"), 404, "not-found")


async def test_validation_errors_name_the_field_not_the_validator(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    created = await client.post("/v1/users", json={"email": "ok@example.com", "name": "Ok"})
    answer = await client.patch(
        f"/v1/users/{created.json()['id']}", json={"email": "a.@example.com"}
    )
    problem = assert_problem(answer, 422, "validation-error")
    assert problem["errors"] == [
        {"loc": ["body", "email"], "msg": problem["errors"][0]["msg"], "type": "value_error"}  # type: ignore[index]
    ]


@pytest.mark.parametrize(
    "name", ["a\u0000b", "tab\there", "bell\u0007"], ids=["nul", "tab", "bell"]
)
async def test_a_patch_with_control_characters_in_the_name_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, name: str
) -> None:
    created = await client.post("/v1/users", json={"email": "nul@example.com", "name": "Ada"})
    assert created.status_code == 201
    user = created.json()
    outbox_before = await db.fetchval("SELECT count(*) FROM outbox")

    answer = await client.patch(f"/v1/users/{user['id']}", json={"name": name})

    problem = assert_problem(answer, 422, "validation-error")
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert [error["loc"][-1] for error in errors] == ["name"]
    assert await db.fetchval("SELECT name FROM users") == "Ada"
    assert await db.fetchval("SELECT count(*) FROM outbox") == outbox_before
