"""The whole write-to-email path in one test: the api (in process), a relay, the notifier
(in process, consuming), the real broker and the project's Postmark sandbox over HTTP."""

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
from outbox_relay.relay import Relay
from postroom.settings import NotifierSettings, RelaySettings
from tests.conftest import (
    API_TOKEN,
    Sandbox,
    make_api_settings,
    make_notifier_settings,
    make_relay_settings,
    unique,
)


@dataclass
class Stack:
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


def _client(app: FastAPI, base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=base_url,
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )


@asynccontextmanager
async def running_stack(
    database_url: str, kafka_bootstrap: str, sandbox: Sandbox, **notifier_overrides: Any
) -> AsyncIterator[Stack]:
    prefix = unique("t")
    api_app = create_api(make_api_settings(database_url))
    relay_settings = make_relay_settings(database_url, kafka_bootstrap, kafka_topic_prefix=prefix)
    settings = make_notifier_settings(
        database_url, kafka_bootstrap, sandbox.url, prefix, **notifier_overrides
    )
    notifier_app = create_notifier(settings)
    relay = Relay(relay_settings)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(LifespanManager(api_app))
        await stack.enter_async_context(LifespanManager(notifier_app))
        relay_task = asyncio.create_task(relay.run())

        async def stop_relay() -> None:
            relay.stop()
            await asyncio.wait_for(relay_task, timeout=30)

        stack.push_async_callback(stop_relay)
        api = await stack.enter_async_context(_client(api_app, "http://testserver"))
        notifier = await stack.enter_async_context(_client(notifier_app, "http://notifier"))
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
