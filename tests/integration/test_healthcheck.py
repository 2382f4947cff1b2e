"""The image's health check passes when the container's process answers, whichever process
it is, and fails when none does."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlsplit

from postroom_cli.embedded import free_port
from tests.support.postmark import Sandbox

SETTINGS = ("API_PORT", "NOTIFIER_PORT", "RELAY_METRICS_PORT", "SANDBOX_PORT")


def check(**ports: int) -> int:
    env = {**os.environ, **{name: str(free_port()) for name in SETTINGS}}
    env.update({name: str(port) for name, port in ports.items()})
    return subprocess.run(
        [sys.executable, "-m", "postroom.healthcheck"], env=env, timeout=60, check=False
    ).returncode


def test_a_container_running_the_sandbox_is_healthy(sandbox: Sandbox) -> None:
    port = urlsplit(sandbox.url).port
    assert port is not None
    assert check(SANDBOX_PORT=port) == 0


def test_a_container_whose_process_does_not_answer_is_unhealthy() -> None:
    assert check() == 1
