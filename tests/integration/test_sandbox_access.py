"""Outside development the sandbox's capture API and inbox pages, which show every
verification link, answer only to its server token; its health and Postmark routes keep
their own rules (the real app, over ASGI)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from sandbox.app import create_app
from sandbox.settings import SandboxSettings

TOKEN = "sandbox-access-token-0123"


async def client_for(env: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(SandboxSettings(app_env=env, postmark_server_token=SecretStr(TOKEN)))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client


@pytest.fixture
async def production() -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for("production"):
        yield client


@pytest.fixture
async def development() -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for("development"):
        yield client


PROTECTED = ["/", "/api/messages", "/api/faults", "/api/stats", "/api/webhooks"]


@pytest.mark.parametrize("path", PROTECTED)
async def test_without_the_token_its_pages_and_api_are_401(
    production: httpx.AsyncClient, path: str
) -> None:
    anonymous = await production.get(path)
    wrong = await production.get(path, auth=("inbox", "not-the-token"))

    assert (anonymous.status_code, wrong.status_code) == (401, 401)
    assert anonymous.headers["www-authenticate"].startswith("Basic")
    assert TOKEN not in anonymous.text


@pytest.mark.parametrize("path", PROTECTED)
async def test_the_token_opens_them_as_a_header_or_basic_auth(
    production: httpx.AsyncClient, path: str
) -> None:
    header = await production.get(path, headers={"X-Postmark-Server-Token": TOKEN})
    basic = await production.get(path, auth=("anyone", TOKEN))
    assert (header.status_code, basic.status_code) == (200, 200)


async def test_a_fault_cannot_be_set_without_the_token(production: httpx.AsyncClient) -> None:
    refused = await production.put("/api/faults", json={"error_rate": 1.0})
    faults = await production.get("/api/faults", headers={"X-Postmark-Server-Token": TOKEN})
    assert refused.status_code == 401
    assert faults.json()["error_rate"] == 0.0


async def test_health_stays_open_and_development_needs_no_token(
    production: httpx.AsyncClient, development: httpx.AsyncClient
) -> None:
    assert (await production.get("/healthz")).status_code == 200
    assert (await development.get("/")).status_code == 200
    assert (await development.get("/api/messages")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/clear"),
        ("POST", "/messages/some-id/delete"),
        ("DELETE", "/api/messages"),
        ("DELETE", "/api/messages/some-id"),
        ("GET", "/api/messages/some-id/raw"),
    ],
)
async def test_deleting_and_the_raw_view_need_the_token_too(
    production: httpx.AsyncClient, method: str, path: str
) -> None:
    refused = await production.request(method, path)
    allowed = await production.request(method, path, headers={"X-Postmark-Server-Token": TOKEN})
    assert refused.status_code == 401
    assert allowed.status_code != 401
