"""Property-based requests against the notifier's published OpenAPI document, the Postmark
webhook route included: never a 5xx, only documented answers, sent to a real `postroom
notifier` process over HTTP."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from notifier.app import create_app
from postroom_cli.embedded import free_port
from tests.support.names import unique
from tests.support.postgres import PostgresServer
from tests.support.postmark import Sandbox
from tests.support.settings import (
    API_TOKEN,
    EMAIL_SECRET,
    POSTMARK_TOKEN,
    WEBHOOK_PASSWORD,
    WEBHOOK_USER,
    make_notifier_settings,
)
from tests.support.waiting import wait_until_answers

pytestmark = pytest.mark.kafka

schema = schemathesis.openapi.from_dict(
    create_app(
        make_notifier_settings("postgresql://unused@127.0.0.1/unused", "x:9", "http://x", "t"),
        consume=False,
    ).openapi()
)


@pytest.fixture(scope="module")
def notifier_url(postgres: PostgresServer, kafka_bootstrap: str, sandbox: Sandbox) -> Iterator[str]:
    name = f"postroom_fuzz_{uuid.uuid4().hex[:10]}"
    postgres.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres.template}"')
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "development",
        "DATABASE_URL": postgres.url(name),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": unique("t"),
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "NOTIFIER_PORT": str(port),
        "API_TOKENS": API_TOKEN,
        "EMAIL_TOKEN_SECRET": EMAIL_SECRET,
        "POSTMARK_SERVER_TOKEN": POSTMARK_TOKEN,
        "POSTMARK_API_URL": sandbox.url + "/",
        "WEBHOOK_USERNAME": WEBHOOK_USER,
        "WEBHOOK_PASSWORD": WEBHOOK_PASSWORD,
        "LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([sys.executable, "-m", "notifier"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        # Ready: consuming (after the group join) and the database answers.
        wait_until_answers(f"{url}/readyz", process, name="notifier", within=60)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)
        postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_notifier_keeps_its_published_promises(
    case: schemathesis.Case, notifier_url: str
) -> None:
    excluded = []
    if case.path == "/webhooks/postmark":
        credentials = base64.b64encode(f"{WEBHOOK_USER}:{WEBHOOK_PASSWORD}".encode()).decode()
        headers = {"Authorization": f"Basic {credentials}"}
        # The schema describes what Postmark sends, and the route reads it leniently, storing
        # what it can (invariant 8): a schema-valid body may still be refused (400: a date
        # Python cannot hold, a body nested too deep) and a slightly off one accepted
        # (`"SuppressSending": 0`). What must hold is the rest: never a 5xx, only documented
        # answers.
        excluded += [
            schemathesis.checks.positive_data_acceptance,
            schemathesis.checks.negative_data_rejection,
        ]
    else:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        # A cursor's validity is its digest, which no schema can describe: a schema-valid
        # random one is rightly refused (422 invalid-cursor).
        if "cursor" in (case.query or {}):
            excluded.append(schemathesis.checks.positive_data_acceptance)
    case.call_and_validate(base_url=notifier_url, headers=headers, excluded_checks=excluded)
