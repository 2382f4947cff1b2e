"""The api answers 503 problems while PostgreSQL is down and recovers without a restart."""

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from migrations import upgrade
from postroom_cli.embedded import EmbeddedPostgres, free_port
from tests.support.processes import start_api, stop_api
from tests.support.settings import API_TOKEN


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A durable server of this test's own, since the test stops it abruptly."""
    workdir = tempfile.mkdtemp(prefix="postroom-outage-")
    server = EmbeddedPostgres(Path(workdir) / "data", port=free_port(), durable=True)
    server.start()
    try:
        yield server
    finally:
        server.discard()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_for_status(url: str, status: int, *, timeout: float = 20) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(url, timeout=5)
        if answer.status_code == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def test_readyz_follows_the_database(own_postgres: EmbeddedPostgres) -> None:
    own_postgres.create_database("postroom")
    upgrade(own_postgres.url("postroom"))
    api = start_api(own_postgres.url("postroom"), DATABASE_CONNECT_TIMEOUT="1")
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    try:
        assert wait_for_status(f"{api.base_url}/readyz", 200).status_code == 200
        created = httpx.post(
            f"{api.base_url}/v1/users", json={"email": "a@example.com", "name": "A"}, headers=auth
        )
        assert created.status_code == 201

        own_postgres.stop(mode="immediate")

        down = wait_for_status(f"{api.base_url}/readyz", 503)
        assert down.status_code == 503
        assert down.headers["content-type"] == "application/problem+json"
        assert down.json()["type"] == "urn:postroom:problem:database-unavailable"
        refused = httpx.post(
            f"{api.base_url}/v1/users",
            json={"email": "b@example.com", "name": "B"},
            headers=auth,
            timeout=10,
        )
        assert refused.status_code == 503
        assert refused.json()["type"] == "urn:postroom:problem:database-unavailable"
        assert refused.headers["retry-after"] == "1"
        assert httpx.get(f"{api.base_url}/healthz").status_code == 200  # alive, not ready

        own_postgres.start()

        assert wait_for_status(f"{api.base_url}/readyz", 200).status_code == 200
        # The same process serves again at once: the pool dropped its dead connections.
        again = httpx.post(
            f"{api.base_url}/v1/users", json={"email": "c@example.com", "name": "C"}, headers=auth
        )
        assert again.status_code == 201
        listed = httpx.get(f"{api.base_url}/v1/users/{created.json()['id']}", headers=auth)
        assert listed.status_code == 200
        assert api.process.poll() is None
    finally:
        stop_api(api)
