"""A request that finds every database connection busy waits a bounded time, then says so."""

from __future__ import annotations

import asyncio
import time

import httpx
from asgi_lifespan import LifespanManager

from api.app import create_app
from tests.support.settings import API_TOKEN, make_api_settings


async def test_a_request_waits_for_a_connection_at_most_the_connect_timeout(
    database_url: str,
) -> None:
    settings = make_api_settings(database_url, database_pool_size=1, database_connect_timeout=0.5)
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as client:
            # Another request holds the pool's one connection.
            async with app.state.api.pool.acquire():
                started = time.monotonic()
                async with asyncio.timeout(10):  # a request that waits forever fails here
                    answer = await client.post(
                        "/v1/users", json={"email": "waits@example.com", "name": "Waits"}
                    )
                waited = time.monotonic() - started
            assert answer.status_code == 503
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.headers["retry-after"] == "1"
            assert 0.4 < waited < 5

            # Once the connection is back, the same request goes through.
            again = await client.post(
                "/v1/users", json={"email": "waits@example.com", "name": "Waits"}
            )
            assert again.status_code == 201
