"""`postroom dev` (what `make dev` runs): the stack comes up on embedded defaults, the printed
token works, the event is visible from the CLI, Ctrl-C stops everything, and data persists."""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from postroom.embedded import free_port

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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
    def __init__(self, workdir: Path, ports: dict[str, int]) -> None:
        env = clean_env()
        env.update({name: str(port) for name, port in ports.items()}, LOG_LEVEL="warning")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "postroom.cli", "dev"],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
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

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=60)
        self._pump_thread.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code


def test_dev_runs_the_stack_and_keeps_its_data(tmp_path: Path) -> None:
    ports = dev_ports()
    pg_port = ports["POSTROOM_DEV_PG_PORT"]
    base = f"http://127.0.0.1:{ports['API_PORT']}"
    kafka = f"127.0.0.1:{ports['POSTROOM_DEV_KAFKA_PORT']}"

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
        recent = subprocess.run(
            [sys.executable, "-m", "postroom.cli", "outbox", "recent"],
            env={
                **os.environ,
                "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{pg_port}/postroom",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "user.registered" in recent.stdout
        assert created.json()["id"] in recent.stdout
        # ... and the relay put it on the broker.
        tailed = subprocess.run(
            [
                sys.executable,
                "-m",
                "postroom.cli",
                "events",
                "tail",
                "--from-beginning",
                "--limit",
                "1",
                "--wait",
                "20",
            ],
            env={
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": kafka,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        record = json.loads(tailed.stdout.splitlines()[0])
        assert record["type"] == "user.registered"
        assert record["key"] == created.json()["id"]
        assert record["data"]["email"] == "ada@example.com"
        # ... and the notifier sent the welcome email into the dev inbox; its link verifies.
        inbox = f"http://127.0.0.1:{ports['SANDBOX_PORT']}"
        deadline = time.monotonic() + 30
        while not (
            mail := httpx.get(f"{inbox}/api/messages", params={"to": "ada@example.com"}).json()
        ):
            assert time.monotonic() < deadline, "no welcome email in the dev inbox"
            time.sleep(0.1)
        assert len(mail) == 1
        assert mail[0]["Subject"].startswith("Welcome")
        link = next(w for w in mail[0]["TextBody"].split() if "/verify-email?token=" in w)
        assert link.startswith(base)
        opened = httpx.get(link)  # the page: the address and a button; nothing changes yet
        assert opened.status_code == 200
        assert "Verify ada@example.com" in opened.text
        pressed = httpx.post(
            f"{base}/verify-email", data={"token": parse_qs(urlsplit(link).query)["token"][0]}
        )
        assert pressed.status_code == 200
        assert "is now verified" in pressed.text
        verified = httpx.get(
            f"{base}/v1/users/{created.json()['id']}",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert verified.json()["email_verified"] is True
        assert "ada@example.com" in httpx.get(inbox).text

        # Postmark's hard-bounce test address: the sandbox bounces it and posts the webhook,
        # the notifier suppresses the address and announces email.bounced.
        bouncy = "hardbounce@bounce-testing.postmarkapp.com"
        httpx.post(
            f"{base}/v1/users",
            json={"email": bouncy, "name": "Bouncy"},
            headers={"Authorization": f"Bearer {token}"},
        ).raise_for_status()
        notifier = f"http://127.0.0.1:{ports['NOTIFIER_PORT']}"
        deadline = time.monotonic() + 30
        while True:
            listed = httpx.get(
                f"{notifier}/v1/suppressions", headers={"Authorization": f"Bearer {token}"}
            ).json()["items"]
            if [s["email"] for s in listed] == [bouncy]:
                break
            assert time.monotonic() < deadline, f"not suppressed: {listed}"
            time.sleep(0.1)
        email_events = subprocess.run(
            [
                sys.executable,
                "-m",
                "postroom.cli",
                "events",
                "tail",
                "--aggregate",
                "email",
                "--from-beginning",
                "--wait",
                "5",
            ],
            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        kinds = [json.loads(line)["type"] for line in email_events.stdout.splitlines()]
        assert "email.bounced" in kinds

        # The address is freed, then another user changes to it: the verification email
        # for the new address is suppressed, not sent.
        auth = {"Authorization": f"Bearer {token}"}
        bouncy_user = httpx.get(
            f"{notifier}/v1/notifications", params={"email": bouncy}, headers=auth
        ).json()["items"][0]["user_id"]
        assert httpx.delete(f"{base}/v1/users/{bouncy_user}", headers=auth).status_code == 204
        other = httpx.post(
            f"{base}/v1/users", json={"email": "other@example.com", "name": "Other"}, headers=auth
        ).json()
        moved = httpx.patch(f"{base}/v1/users/{other['id']}", json={"email": bouncy}, headers=auth)
        assert moved.status_code == 200
        deadline = time.monotonic() + 30
        while True:
            held = httpx.get(
                f"{notifier}/v1/notifications", params={"email": bouncy}, headers=auth
            ).json()["items"]
            verify = [n for n in held if n["template"] == "verify_new_email"]
            if verify and verify[0]["status"] != "pending":
                break
            assert time.monotonic() < deadline, f"no verification notification: {held}"
            time.sleep(0.1)
        assert verify[0]["status"] == "suppressed"
        sent_to_bouncy = httpx.get(f"{inbox}/api/messages", params={"to": bouncy}).json()
        assert [m["Tag"] for m in sent_to_bouncy] == ["welcome"]

        # The operator verbs work against the running stack from its checkout, with no
        # settings given: they read what `make dev` filled in.
        verbs = subprocess.run(
            [sys.executable, "-m", "postroom.cli", "suppressions", "list"],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert bouncy in verbs.stdout
        status = subprocess.run(
            [sys.executable, "-m", "postroom.cli", "outbox", "status"],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "pending" in status.stdout

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
    assert "embedded broker stopped" in output
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
