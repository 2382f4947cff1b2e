"""`postroom dev` ends the way a developer ends it, and says why it cannot start."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postroom_cli.embedded import EmbeddedPostgres, free_port
from tests.support.dev import DevStack, alive, clean_env, dev_ports, left_running


def test_a_closed_terminal_stops_every_process_and_both_servers(tmp_path: Path) -> None:
    ports = dev_ports()
    stack = DevStack(tmp_path, ports)
    try:
        stack.wait_for(r"Postroom is running")
    finally:
        code = stack.stop(signal.SIGHUP)
    output = "".join(stack.output)
    assert code == 0, output
    assert "SIGHUP: stopping" in output
    assert "embedded PostgreSQL stopped" in output
    assert re.search(r"^(Apache Kafka \S+|Tansu .*) stopped$", output, re.MULTILINE)
    started = [int(pid) for pid in re.findall(r"started \w+ \(pid (\d+)\)", output)]
    assert len(started) == 4
    assert [pid for pid in started if alive(pid)] == []
    # Each process stopped on one signal, gracefully: no traceback from a cut-short shutdown.
    assert "Traceback" not in output
    assert "CancelledError" not in output
    for port in ports.values():
        with socket.socket() as sock:
            # Connections closed a moment ago may linger (TIME_WAIT); a listener may not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_a_taken_port_is_named_with_the_setting_that_moves_it(tmp_path: Path) -> None:
    ports = dev_ports()
    env = clean_env()
    env.update({name: str(port) for name, port in ports.items()})
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["API_PORT"]))
        squatter.listen()
        done = subprocess.run(
            [sys.executable, "-m", "postroom_cli", "dev"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"postroom dev: port {ports['API_PORT']} (api) is in use by ")
    assert f"(pid {os.getpid()})" in lines[0]  # this test holds it
    assert lines[0].endswith("set API_PORT to use another")
    assert "starting embedded PostgreSQL" not in done.stdout  # nothing was started


@pytest.mark.parametrize("value", ["abc", "70000", "0", "²", "9" * 5000])
def test_a_port_setting_that_is_not_a_port_is_one_line_before_anything_starts(
    tmp_path: Path, value: str
) -> None:
    env = clean_env() | {name: str(port) for name, port in dev_ports().items()}
    env["POSTROOM_DEV_PG_PORT"] = value
    done = subprocess.run(
        [sys.executable, "-m", "postroom_cli", "dev"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(
        "postroom dev: configuration error: POSTROOM_DEV_PG_PORT must be a port number"
    )
    assert "starting" not in done.stdout


def test_ctrl_c_at_any_moment_of_the_start_ends_quietly_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    env = clean_env() | {name: str(port) for name, port in dev_ports().items()}
    # Loading the command, then PostgreSQL starting, then the broker (one checkout: from the
    # second run on, its data folders exist, as on a developer's machine).
    moments = [round(0.1 + 0.05 * step, 2) for step in range(19)] + [1.5, 2.0, 3.0]
    for moment in moments:
        dev = subprocess.Popen(
            [sys.executable, "-m", "postroom_cli", "dev"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        time.sleep(moment)
        os.killpg(dev.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it: to the group
        out, err = dev.communicate(timeout=120)
        said = f"Ctrl-C after {moment} s:\n{out}{err}"
        assert "Traceback" not in err, said
        assert "KeyboardInterrupt" not in err, said
        # Before the supervisor runs, Ctrl-C interrupts a command (130, as for any command);
        # once it runs, Ctrl-C is how the stack ends (0). Python itself ends a process
        # interrupted before it ran any code by the signal, silently.
        if "SIGINT: stopping" in out:
            assert dev.returncode == 0, said
        else:
            assert dev.returncode in (130, -signal.SIGINT), said
        assert left_running(tmp_path) == [], said


def test_a_postgresql_that_cannot_start_says_why_in_one_line_naming_its_log(
    tmp_path: Path,
) -> None:
    # This checkout's PostgreSQL still runs from an earlier `make dev` (killed, say), on
    # another port than POSTROOM_DEV_PG_PORT now names, which something else holds.
    ports = dev_ports()
    env = clean_env() | {name: str(port) for name, port in ports.items()}
    leftover = EmbeddedPostgres(tmp_path / ".postroom" / "pg", port=free_port())
    leftover.start()
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", ports["POSTROOM_DEV_PG_PORT"]))
            squatter.listen()
            done = subprocess.run(
                [sys.executable, "-m", "postroom_cli", "dev"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        assert done.returncode == 1
        # The cause and where the details are, not the server's log.
        assert done.stderr.splitlines() == [
            f"postroom dev: PostgreSQL did not start on port {ports['POSTROOM_DEV_PG_PORT']}: "
            'could not bind IPv4 address "127.0.0.1": Address already in use '
            "(log: .postroom/pg/server.log)"
        ]
        log = (tmp_path / ".postroom" / "pg" / "server.log").read_text()
        assert "Is another postmaster already running on port" in log
        assert left_running(tmp_path) == []
    finally:
        leftover.discard()
