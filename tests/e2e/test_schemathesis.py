"""Property-based requests generated from the published OpenAPI document.

Every generated request (valid and invalid) must get an answer the document describes, with
the documented media type, and never a 5xx. The document comes from the app factory; the
requests go to a real `postroom api` process over HTTP.
"""

import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.app import create_app
from tests.support.postgres import PostgresServer
from tests.support.processes import LiveApi, start_api, stop_api
from tests.support.settings import API_TOKEN, make_api_settings

# Building the app does no I/O (the engine is made in the lifespan), so this is cheap.
schema = schemathesis.openapi.from_dict(
    create_app(make_api_settings("postgresql://unused@127.0.0.1/unused")).openapi()
)


@pytest.fixture(scope="module")
def shared_api(postgres: PostgresServer) -> Iterator[LiveApi]:
    """One server and database for all generated cases: state they leave is part of the test."""
    name = f"postroom_fuzz_{uuid.uuid4().hex[:10]}"
    postgres.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres.template}"')
    api = start_api(postgres.url(name))
    try:
        yield api
    finally:
        stop_api(api)
        postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


PUBLIC = {
    "/verify-email",
    "/verify-email/resend",
    "/v1/email-verifications",
    "/healthz",
    "/readyz",
    "/metrics",
}
# A verification token's validity is its signature, which no schema can describe: a
# schema-valid random token is rightly refused (400), so "valid data is accepted" cannot hold.
SIGNED = {"/verify-email", "/verify-email/resend", "/v1/email-verifications"}


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_api_keeps_its_published_promises(case: schemathesis.Case, shared_api: LiveApi) -> None:
    headers = {} if case.path in PUBLIC else {"Authorization": f"Bearer {API_TOKEN}"}
    # Likewise a replayed Idempotency-Key with another body is rightly refused (422).
    stateful = case.path in SIGNED or "Idempotency-Key" in (case.headers or {})
    excluded = [schemathesis.checks.positive_data_acceptance] if stateful else []
    case.call_and_validate(base_url=shared_api.base_url, headers=headers, excluded_checks=excluded)
