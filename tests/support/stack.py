"""The write-to-email path in process, around the real broker and the Postmark sandbox over
HTTP: the whole of it (`running_stack`: the api, a relay, the notifier), or its pieces (the api
and a relay, a notifier) for drills that start and stop a notifier of their own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from api.app import create_app as create_api
from notifier.app import create_app as create_notifier
from notifier.consumer import Consumer, State
from notifier.settings import NotifierSettings
from outbox_relay.settings import RelaySettings
from tests.support.names import unique
from tests.support.postmark import Sandbox
from tests.support.relay import running
from tests.support.settings import (
    API_TOKEN,
    make_api_settings,
    make_notifier_settings,
    make_relay_settings,
)

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@dataclass
class Stack:
    """The running stack: clients of the api, the notifier and the sandbox, and settings."""

    api: httpx.AsyncClient
    notifier: httpx.AsyncClient
    notifier_app: FastAPI
    sandbox: httpx.AsyncClient
    settings: NotifierSettings
    relay_settings: RelaySettings

    @property
    def consumer(self) -> Consumer:
        consumer: Consumer = self.notifier_app.state.consumer
        return consumer

    async def wait_consuming(self, within: float = 30) -> None:
        async with asyncio.timeout(within):
            while self.consumer.state is not State.CONSUMING:
                await asyncio.sleep(0.05)

    async def messages(self, to: str) -> list[dict[str, Any]]:
        answer = await self.sandbox.get("/api/messages", params={"to": to})
        answer.raise_for_status()
        found: list[dict[str, Any]] = answer.json()
        return found

    async def wait_messages(
        self, to: str, count: int = 1, within: float = 20
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        while True:
            found = await self.messages(to)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)

    async def notifications(self, **params: str) -> list[dict[str, Any]]:
        answer = await self.notifier.get("/v1/notifications", params=params)
        answer.raise_for_status()
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    async def wait_status(
        self, email: str, status: str, count: int = 1, within: float = 20
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        while True:
            found = await self.notifications(email=email, status=status)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)


def http_client(app: FastAPI, base_url: str) -> httpx.AsyncClient:
    """An HTTP client of an app in process, authenticated with `API_TOKEN`."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=base_url, headers=AUTH
    )


@asynccontextmanager
async def operator_api(settings: NotifierSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The notifier's HTTP app without its consumer (its operator routes need no broker),
    started, and a client of it authenticated with `API_TOKEN`."""
    app = create_notifier(settings, consume=False)
    async with LifespanManager(app), http_client(app, "http://notifier") as client:
        yield client


@asynccontextmanager
async def running_stack(
    database_url: str, kafka_bootstrap: str, sandbox: Sandbox, **notifier_overrides: Any
) -> AsyncIterator[Stack]:
    """The api, a relay and a notifier sharing a topic prefix of their own."""
    prefix = unique("t")
    api_app = create_api(make_api_settings(database_url))
    relay_settings = make_relay_settings(database_url, kafka_bootstrap, kafka_topic_prefix=prefix)
    settings = make_notifier_settings(
        database_url, kafka_bootstrap, sandbox.url, prefix, **notifier_overrides
    )
    notifier_app = create_notifier(settings)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(LifespanManager(api_app))
        await stack.enter_async_context(LifespanManager(notifier_app))
        await stack.enter_async_context(running(relay_settings))
        api = await stack.enter_async_context(http_client(api_app, "http://testserver"))
        notifier = await stack.enter_async_context(http_client(notifier_app, "http://notifier"))
        sandbox_client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=sandbox.url, timeout=10)
        )
        yield Stack(
            api=api,
            notifier=notifier,
            notifier_app=notifier_app,
            sandbox=sandbox_client,
            settings=settings,
            relay_settings=relay_settings,
        )


@asynccontextmanager
async def api_and_relay(
    database_url: str, kafka_bootstrap: str
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The api in process and a relay beside it; yields the api client and the topic prefix."""
    relay_settings = make_relay_settings(database_url, kafka_bootstrap)
    api_app = create_api(make_api_settings(database_url))
    async with (
        LifespanManager(api_app),
        http_client(api_app, "http://testserver") as api,
        running(relay_settings),
    ):
        yield api, relay_settings.kafka_topic_prefix


@asynccontextmanager
async def notifier_in_process(settings: NotifierSettings) -> AsyncIterator[httpx.AsyncClient]:
    """A notifier in process, consuming; yields a client of its HTTP API."""
    app = create_notifier(settings)
    async with LifespanManager(app), http_client(app, "http://notifier") as client:
        yield client


async def register(api: httpx.AsyncClient, email: str) -> None:
    """Register a user with `email` through the api; fail unless it answers 201."""
    answer = await api.post("/v1/users", json={"email": email, "name": "Drill"})
    assert answer.status_code == 201, answer.text
