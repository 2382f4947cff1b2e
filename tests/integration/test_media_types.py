"""A body that is not JSON, sent to a route that reads JSON, as curl sends one by mistake
(`-d` is a form, `text/plain`, no Content-Type at all): a 415 problem, and nothing written.
JSON with a charset, or a `+json` type, is read as before. The apps run under uvicorn and
are spoken to over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app as create_api
from notifier.app import create_app as create_notifier
from postroom.problems import PROBLEM_MEDIA_TYPE, UNSUPPORTED_MEDIA_TYPE
from postroom_cli.embedded import free_port
from tests.support.settings import API_TOKEN, make_api_settings, make_notifier_settings

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
USER = {"email": "ada@example.com", "name": "Ada"}


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """`app` under uvicorn on a free port (lifespan and all), and a client of it."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as http:
            yield http
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with served(create_api(make_api_settings(database_url))) as http:
        yield http


@pytest.fixture
async def notifier(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_notifier_settings(database_url, "127.0.0.1:9", "http://127.0.0.1:9", "t")
    async with served(create_notifier(settings, consume=False)) as http:
        yield http


# What curl sends by mistake: `-d 'email=...'` (a form), `-H 'Content-Type: text/plain'
# -d '{...}'`, and JSON through a client that names no type.
NOT_JSON = ["form", "text/plain", "no type"]


def not_json(kind: str, body: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """`body` as curl would send it by mistake (`kind`): the bytes and the headers."""
    if kind == "form":
        return urlencode(body).encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    headers = {"Content-Type": "text/plain"} if kind == "text/plain" else {}
    return json.dumps(body).encode(), headers


def assert_unsupported(answer: httpx.Response) -> None:
    assert answer.status_code == 415, answer.text
    assert answer.headers["content-type"] == PROBLEM_MEDIA_TYPE
    problem = answer.json()
    assert problem["type"] == UNSUPPORTED_MEDIA_TYPE.uri
    assert problem["status"] == 415
    assert "application/json" in problem["detail"]


async def count(db: asyncpg.Connection, table: str) -> int:
    queries = {
        "users": "SELECT count(*) FROM users",
        "outbox": "SELECT count(*) FROM outbox",
        "idempotency_keys": "SELECT count(*) FROM idempotency_keys",
        "suppressions": "SELECT count(*) FROM suppressions",
    }
    return int(await db.fetchval(queries[table]))


@pytest.mark.parametrize("kind", NOT_JSON)
async def test_registering_with_a_body_that_is_not_json_is_a_415(
    api: httpx.AsyncClient, db: asyncpg.Connection, kind: str
) -> None:
    content, headers = not_json(kind, USER)

    answer = await api.post(
        "/v1/users", content=content, headers={**headers, "Idempotency-Key": "k-1"}
    )

    assert_unsupported(answer)
    assert [await count(db, table) for table in ("users", "outbox", "idempotency_keys")] == [0] * 3
    # The same user as JSON, charset and all, with the same key: the key was not spent.
    again = await api.post(
        "/v1/users",
        content=json.dumps(USER).encode(),
        headers={"Content-Type": "application/json; charset=utf-8", "Idempotency-Key": "k-1"},
    )
    assert again.status_code == 201, again.text
    assert "Idempotent-Replayed" not in again.headers


async def test_changing_a_user_with_a_form_is_a_415_and_changes_nothing(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    created = await api.post("/v1/users", json=USER)
    assert created.status_code == 201

    answer = await api.patch(created.headers["Location"], data={"name": "Grace"})

    assert_unsupported(answer)
    assert await db.fetchval("SELECT name FROM users") == "Ada"
    assert await count(db, "outbox") == 1  # user.registered alone
    # A JSON type of its own (`+json`) is JSON.
    changed = await api.patch(
        created.headers["Location"],
        content=json.dumps({"name": "Grace"}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert changed.status_code == 200, changed.text
    assert await db.fetchval("SELECT name FROM users") == "Grace"


async def test_verifying_with_a_form_is_a_415(api: httpx.AsyncClient) -> None:
    # The JSON route, not the page's button (which posts a form on purpose).
    assert_unsupported(await api.post("/v1/email-verifications", data={"token": "x"}))
    # No body at all is a body missing, whatever the type says.
    empty = await api.post("/v1/email-verifications", headers={"Content-Type": "text/plain"})
    assert empty.status_code == 422
    assert empty.json()["errors"][0]["type"] == "missing"


@pytest.mark.parametrize("kind", NOT_JSON)
async def test_suppressing_with_a_body_that_is_not_json_is_a_415(
    notifier: httpx.AsyncClient, db: asyncpg.Connection, kind: str
) -> None:
    content, headers = not_json(kind, {"email": "quiet@example.com"})

    answer = await notifier.post("/v1/suppressions", content=content, headers=headers)

    assert_unsupported(answer)
    assert [await count(db, "suppressions"), await count(db, "outbox")] == [0, 0]
