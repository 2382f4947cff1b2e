"""`postroom dev` (what `make dev` runs) supervises the stack: a crashed process is restarted,
Ctrl-C stops every process and both embedded servers, and a second start in the same checkout
keeps the data and the generated token."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx

from tests.support.dev import DevStack, alive, dev_ports


def test_dev_restarts_a_crashed_process_stops_cleanly_and_keeps_its_data(tmp_path: Path) -> None:
    ports = dev_ports()
    base = f"http://127.0.0.1:{ports['API_PORT']}"

    stack = DevStack(tmp_path, ports)
    try:
        api_pid = int(stack.wait_for(r"started api \(pid (\d+)\)")[1])
        token = stack.wait_for(r"^\s+token\s+(\S+)")[1]
        created = httpx.post(
            f"{base}/v1/users",
            json={"email": "ada@example.com", "name": "Ada"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201

        # A crashed process is restarted by the supervisor, and answers again.
        os.kill(api_pid, signal.SIGKILL)
        stack.wait_for(r"api exited with code -9; restarting in 1 s")
        new_pid = int(stack.wait_for(r"started api \(pid (\d+)\)")[1])
        assert new_pid != api_pid
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the api did not come back"
            time.sleep(0.1)
    finally:
        code = stack.stop()
    assert code == 0
    output = "".join(stack.output)
    assert "embedded PostgreSQL stopped" in output
    assert re.search(r"^(Apache Kafka \S+|Tansu .*) stopped$", output, re.MULTILINE)
    # Ctrl-C leaves no process behind: every child the supervisor started is gone.
    started = [int(pid) for pid in re.findall(r"started \w+ \(pid (\d+)\)", output)]
    assert len(started) >= 5  # four processes and the restarted api
    assert [pid for pid in started if alive(pid)] == []
    assert (tmp_path / ".postroom" / "pg" / "PG_VERSION").exists()

    # A second start reuses the data folder and the generated token.
    again = DevStack(tmp_path, ports)
    try:
        assert again.wait_for(r"^\s+token\s+(\S+)")[1] == token
        repeat = httpx.post(
            f"{base}/v1/users",
            json={"email": "ada@example.com", "name": "Ada"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert repeat.status_code == 409  # Ada is still there
    finally:
        assert again.stop() == 0
