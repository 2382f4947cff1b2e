"""Postroom processes started as a user would start them (`python -m <process>`), for drills
and end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from notifier.settings import NotifierSettings
from outbox_relay.settings import RelaySettings
from postroom_cli.embedded import free_port
from tests.support.settings import API_TOKEN, EMAIL_SECRET
from tests.support.waiting import wait_until_answers

S = TypeVar("S", bound=BaseSettings)


def _env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return ",".join(_env_value(item) for item in value)
    return str(value)


def settings_env(settings: BaseSettings, **extra: str) -> dict[str, str]:
    """The environment that makes a `postroom` process run with `settings`."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[name.upper()] = _env_value(value)
    env.update(LOG_LEVEL="info", **extra)
    return env


def relay_env(settings: RelaySettings, **extra: str) -> dict[str, str]:
    return settings_env(settings, **extra)


@dataclass
class PostroomProcess(Generic[S]):
    """One Postroom process (`python -m <module>`), logging to a file of its own."""

    command: ClassVar[str]
    module: ClassVar[str]  # what `python -m` runs
    settings: S
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        if self.log_path is None:
            prefix = f"postroom-{self.command}-"
            self.log_path = Path(tempfile.mkstemp(prefix=prefix, suffix=".log")[1])

    def start(self) -> None:
        assert self.log_path is not None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=settings_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no goodbye, no cleanup."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM, the graceful stop; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        assert self.log_path is not None
        return self.log_path.read_text(errors="replace")


class RelayProcess(PostroomProcess[RelaySettings]):
    command = "relay"
    module = "outbox_relay"


class NotifierProcess(PostroomProcess[NotifierSettings]):
    command = "notifier"
    module = "notifier"

    @property
    def url(self) -> str:
        return f"http://{self.settings.notifier_host}:{self.settings.notifier_port}"


@dataclass(frozen=True)
class LiveApi:
    """A running api process, spoken to over loopback HTTP."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path


def start_api(database_url: str, **extra_env: str) -> LiveApi:
    """Start `python -m api` on a free port, accepting `API_TOKEN`; return once it answers."""
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
        process = subprocess.Popen([sys.executable, "-m", "api"], env=env, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    wait_until_answers(f"{base_url}/healthz", process, name="api")
    return LiveApi(base_url, process, log_path)


def stop_api(api: LiveApi) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    api.process.terminate()
    try:
        api.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        api.process.kill()
        api.process.wait()
