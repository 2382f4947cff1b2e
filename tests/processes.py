"""Postroom processes started as a user would start them, for drills and end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from postroom.settings import RelaySettings


def relay_env(settings: RelaySettings, **extra: str) -> dict[str, str]:
    """The environment that makes `postroom relay` run with `settings`."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update(LOG_LEVEL="info", **extra)
    return env


@dataclass
class RelayProcess:
    settings: RelaySettings
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(
        default_factory=lambda: Path(tempfile.mkstemp(prefix="postroom-relay-", suffix=".log")[1])
    )
    starts: int = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "postroom.cli", "relay"],
                env=relay_env(self.settings),
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
        return self.log_path.read_text(errors="replace")
