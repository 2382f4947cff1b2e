"""Which stack the operator verbs talk to, and what they say when it is down: the real
`postroom` command in a process of its own, as an operator runs it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postroom_cli.embedded import free_port
from postroom_cli.main import KAFKA_TIMEOUT
from tests.support.dev import clean_env
from tests.support.settings import API_TOKEN, EMAIL_SECRET, POSTMARK_TOKEN, WEBHOOK_PASSWORD

KAFKA_VERBS = [("dlq", "list"), ("dlq", "replay"), ("events", "tail")]


def postroom(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postroom_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def stack_settings(database_url: str, kafka_bootstrap: str) -> dict[str, str]:
    """What a notifier's settings need, as `make dev` writes them."""
    return {
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "API_TOKENS": API_TOKEN,
        "EMAIL_TOKEN_SECRET": EMAIL_SECRET,
        "POSTMARK_SERVER_TOKEN": POSTMARK_TOKEN,
        "POSTMARK_API_URL": f"http://127.0.0.1:{free_port()}/",
        "WEBHOOK_USERNAME": "postmark",
        "WEBHOOK_PASSWORD": WEBHOOK_PASSWORD,
        "MAIL_FROM": "Postroom <hello@postroom.test>",
        "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
    }


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """An address that takes connections and never says a word (a hung broker)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def assert_one_line_about_the_broker(
    done: subprocess.CompletedProcess[str], group: str, broker: str
) -> None:
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"postroom {group}: the broker at {broker} does not answer (")


@pytest.mark.parametrize("verb", KAFKA_VERBS, ids=" ".join)
def test_a_broker_nobody_listens_on_is_one_line_and_exit_code_3(
    verb: tuple[str, str], tmp_path: Path
) -> None:
    broker = f"127.0.0.1:{free_port()}"
    dead_database = f"postgresql://postgres@127.0.0.1:{free_port()}/postroom"
    env = clean_env() | stack_settings(dead_database, broker)
    started = time.monotonic()

    done = postroom(*verb, cwd=tmp_path, env=env)

    assert_one_line_about_the_broker(done, verb[0], broker)
    assert "Connect call failed" in done.stderr  # the reason, from the client's own log
    assert time.monotonic() - started < KAFKA_TIMEOUT + 10


@pytest.mark.parametrize("verb", KAFKA_VERBS, ids=" ".join)
def test_a_broker_that_never_answers_is_given_up_after_the_stated_bound(
    verb: tuple[str, str], tmp_path: Path, silent_broker: str
) -> None:
    dead_database = f"postgresql://postgres@127.0.0.1:{free_port()}/postroom"
    env = clean_env() | stack_settings(dead_database, silent_broker)
    started = time.monotonic()

    done = postroom(*verb, cwd=tmp_path, env=env)

    took = time.monotonic() - started
    assert_one_line_about_the_broker(done, verb[0], silent_broker)
    assert done.stderr.strip().endswith(f"(waited {KAFKA_TIMEOUT:g} s)")
    # The bound, plus the interpreter starting; aiokafka's own default is 40 s.
    assert KAFKA_TIMEOUT <= took < KAFKA_TIMEOUT + 10
