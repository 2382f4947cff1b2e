"""`postroom dev` (what `make dev` runs) started in a folder of its own, on free ports, with
none of the stack's settings in its environment, as a developer's fresh checkout would run it."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from postroom_cli.embedded import free_port

_STACK_SETTINGS = {
    "DATABASE_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "API_TOKENS",
    "EMAIL_TOKEN_SECRET",
    "APP_ENV",
    "POSTMARK_SERVER_TOKEN",
    "POSTMARK_API_URL",
    "WEBHOOK_USERNAME",
    "WEBHOOK_PASSWORD",
    "SANDBOX_WEBHOOK_URL",
}


def clean_env() -> dict[str, str]:
    """This process's environment without any of the stack's settings."""
    return {key: value for key, value in os.environ.items() if key not in _STACK_SETTINGS}


def alive(pid: int) -> bool:
    """Whether a process with this id still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def left_running(workdir: Path) -> list[str]:
    """The processes a stack in `workdir` started that still run, as "pid command": each works
    in `workdir`, or (PostgreSQL) in its data folder, which `.postroom/pg` is or links to."""
    folders = [workdir.resolve()]
    pg = workdir / ".postroom" / "pg"
    if pg.exists():
        folders.append(pg.resolve())
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue  # gone meanwhile
        if command and any(cwd == f or f in cwd.parents for f in folders):
            found.append(f"{proc.name} {command}")
    return found


def dev_ports() -> dict[str, int]:
    """Free ports for every server `postroom dev` starts, so a test stack collides with none."""
    return {
        name: free_port()
        for name in (
            "POSTROOM_DEV_PG_PORT",
            "POSTROOM_DEV_KAFKA_PORT",
            "API_PORT",
            "RELAY_METRICS_PORT",
            "NOTIFIER_PORT",
            "SANDBOX_PORT",
        )
    }


class DevStack:
    """A running `postroom dev`, in `workdir`, on `ports`; its output is read line by line."""

    def __init__(self, workdir: Path, ports: dict[str, int]) -> None:
        env = clean_env()
        env.update({name: str(port) for name, port in ports.items()}, LOG_LEVEL="warning")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "postroom_cli", "dev"],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # A process group of its own, as a shell gives a command it runs: a signal to
            # the group is what a terminal sends on Ctrl-C or when it closes.
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The next printed line matching `pattern`; fail if none comes within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.output.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"{pattern!r} not printed; got:\n{''.join(self.output)}")

    def stop(self, signum: int = signal.SIGINT) -> int:
        """Ctrl-C (SIGINT to the whole process group, as a terminal sends it), or another
        signal the same way (SIGHUP: the terminal closed); returns the exit code. A stack
        that stopped by itself is only waited for."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)
        code = self.process.wait(timeout=60)
        self._pump_thread.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code
