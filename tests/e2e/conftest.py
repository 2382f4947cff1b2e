"""End-to-end: the real `postroom api` process, spoken to over loopback HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import schemathesis
from hypothesis import strategies as st

from postroom.embedded import free_port
from tests.conftest import API_TOKEN, EMAIL_SECRET
from tests.health import wait_until_answers

# JSON Schema's "email" format admits reserved domains (example.invalid, localhost) that the
# API rightly refuses, since no mail can reach them; generate deliverable-looking addresses.
schemathesis.openapi.format(
    "email",
    st.from_regex(
        r"[a-z0-9]{1,12}([._+-][a-z0-9]{1,8}){0,2}@[a-z0-9]{1,20}\.example\.com", fullmatch=True
    ),
)


@dataclass(frozen=True)
class LiveApi:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path


def start_api(database_url: str, **extra_env: str) -> LiveApi:
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "API_TOKENS": API_TOKEN,
        "EMAIL_TOKEN_SECRET": EMAIL_SECRET,
        "LOG_LEVEL": "warning",
        **extra_env,
    }
    log_path = Path(tempfile.mkstemp(prefix="postroom-api-", suffix=".log")[1])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "postroom.cli", "api"], env=env, stdout=log, stderr=log
        )
    base_url = f"http://127.0.0.1:{port}"
    wait_until_answers(f"{base_url}/healthz", process, name="api")
    return LiveApi(base_url, process, log_path)


def stop_api(api: LiveApi) -> None:
    api.process.terminate()
    try:
        api.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        api.process.kill()
        api.process.wait()


@pytest.fixture
def live_api(database_url: str) -> Iterator[LiveApi]:
    api = start_api(database_url)
    try:
        yield api
    finally:
        stop_api(api)
