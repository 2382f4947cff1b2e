"""One stack per checkout: a second `postroom dev` in a checkout whose stack runs is refused in
one line naming the running stack's PID, and touches nothing of it (before, it restarted the
first stack's PostgreSQL, shared its outbox and overwrote its settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.dev import DevStack, clean_env, dev_ports


def test_a_second_stack_on_one_checkout_is_refused_and_the_first_goes_on(tmp_path: Path) -> None:
    ports = dev_ports()
    first = DevStack(tmp_path, ports)
    try:
        first.wait_for(r"Postroom is running", timeout=120)
        # The banner's operator commands work as printed, from this shell.
        command = first.wait_for(r"^  (\S+(?: -m postroom_cli)?) outbox recent ").group(1)
        shown = subprocess.run(
            [*command.split(), "outbox", "recent", "--json"],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == []
        settings = (tmp_path / ".postroom" / "dev.settings").read_text()
        postgres_pid = (tmp_path / ".postroom" / "pg" / "postmaster.pid").read_text().split()[0]

        # Other ports, so only the checkout can stop it.
        env = clean_env() | {name: str(port) for name, port in dev_ports().items()}
        second = subprocess.run(
            [sys.executable, "-m", "postroom_cli", "dev"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

        assert second.returncode == 1
        assert second.stderr.splitlines() == [
            f"postroom dev: a stack is already running from this checkout (pid "
            f"{first.process.pid}); stop it first (Ctrl-C where it runs, or kill "
            f"{first.process.pid})"
        ]
        assert "starting" not in second.stdout
        # The first stack's database was not restarted, its settings not rewritten.
        assert (tmp_path / ".postroom" / "pg" / "postmaster.pid").read_text().split()[0] == (
            postgres_pid
        )
        assert (tmp_path / ".postroom" / "dev.settings").read_text() == settings
        assert httpx.get(f"http://127.0.0.1:{ports['API_PORT']}/readyz", timeout=10).is_success
    finally:
        assert first.stop() == 0

    # Once it stopped, the checkout takes a stack again (the lock went with the process).
    again = DevStack(tmp_path, ports)
    try:
        again.wait_for(r"Postroom is running", timeout=120)
    finally:
        again.stop()
