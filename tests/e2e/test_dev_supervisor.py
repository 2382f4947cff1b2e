"""`postroom dev` (what `make dev` runs) supervises the stack: a crashed process is restarted,
and so are its database and broker, once; Ctrl-C stops every process and both embedded
servers, and a second start in the same checkout keeps the data and the generated token."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx

from tests.support.dev import DevStack, alive, dev_ports, left_running


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


def _register(base: str, token: str, email: str) -> None:
    """Register `email`, waiting for the api to answer again after an outage."""
    deadline = time.monotonic() + 60
    while True:
        try:
            created = httpx.post(
                f"{base}/v1/users",
                json={"email": email, "name": "Ada"},
                headers={"Authorization": f"Bearer {token}"},
            )
            if created.status_code == 201:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{email} was not registered"
        time.sleep(0.2)


def test_dev_restarts_a_dead_database_or_broker_once_then_stops_the_stack(
    tmp_path: Path,
) -> None:
    ports = dev_ports()
    base = f"http://127.0.0.1:{ports['API_PORT']}"
    inbox = f"http://127.0.0.1:{ports['SANDBOX_PORT']}"
    state = tmp_path / ".postroom"

    stack = DevStack(tmp_path, ports)
    try:
        token = stack.wait_for(r"^\s+token\s+(\S+)")[1]

        # The broker dies: said in one line, started again on its data, and a registration
        # goes all the way to the dev inbox again.
        (broker,) = [p for p in left_running(tmp_path) if "kafka.Kafka" in p or "tansu" in p]
        os.kill(int(broker.split()[0]), signal.SIGKILL)
        died = stack.wait_for(r"^dev     \| (.+) died; restarting it \(log: (\S+)\)$")
        assert re.fullmatch(r"Apache Kafka \S+|Tansu .*", died[1])
        assert died[2] == ".postroom/broker.log"
        stack.wait_for(rf"^dev     \| {re.escape(died[1])} restarted$", timeout=120)
        _register(base, token, "after.broker@example.com")
        deadline = time.monotonic() + 60
        while not httpx.get(
            f"{inbox}/api/messages", params={"to": "after.broker@example.com"}
        ).json():
            assert time.monotonic() < deadline, "no welcome email after the broker's restart"
            time.sleep(0.2)

        # PostgreSQL dies: the same, on its data.
        postmaster = state / "pg" / "postmaster.pid"
        os.kill(int(postmaster.read_text().split()[0]), signal.SIGKILL)
        stack.wait_for(
            r"^dev     \| embedded PostgreSQL died; restarting it "
            r"\(log: \.postroom/pg/server\.log\)$"
        )
        stack.wait_for(r"^dev     \| embedded PostgreSQL restarted$")
        _register(base, token, "after.database@example.com")

        # Dying again right after its restart, it is not restarted a second time: the stack
        # stops, saying why in one line, and fails.
        os.kill(int(postmaster.read_text().split()[0]), signal.SIGKILL)
        stack.wait_for(
            r"^postroom dev: embedded PostgreSQL died again within 60 s of its restart "
            r"\(log: \.postroom/pg/server\.log\); stopping the stack$"
        )
        stack.process.wait(timeout=90)
    finally:
        code = stack.stop()  # only waits, unless the test failed before the stack stopped
    assert code == 1
    output = "".join(stack.output)
    assert output.count(" restarting it ") == 2
    assert "Traceback" not in output
    assert "embedded PostgreSQL stopped" in output
    assert left_running(tmp_path) == []
