"""`postroom dev` (what `make dev` runs) brings up a stack that works as a whole, on embedded
defaults: the printed token is accepted, a registration goes through the outbox, the broker and
the notifier to the dev inbox, a hard bounce is suppressed, and the operator verbs, run from
the checkout with no settings, read what `make dev` filled in.

The tests share one stack (it takes about 30 s to start). Ada is its first user: the
broker's first record and the outbox's newest rows are hers until later tests add their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.dev import DevStack, clean_env, dev_ports

BOUNCY = "hardbounce@bounce-testing.postmarkapp.com"  # the sandbox bounces it, as Postmark does


@dataclass(frozen=True)
class Dev:
    """The running dev stack: where it runs, its ports, and the token it printed."""

    stack: DevStack
    workdir: Path
    ports: dict[str, int]
    token: str

    def url(self, port: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def kafka(self) -> str:
        return f"127.0.0.1:{self.ports['POSTROOM_DEV_KAFKA_PORT']}"


def postroom(*args: str, env: dict[str, str], cwd: Path | None = None) -> str:
    """Run the `postroom` command; its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "postroom_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    workdir = tmp_path_factory.mktemp("checkout")
    ports = dev_ports()
    stack = DevStack(workdir, ports)
    try:
        token = stack.wait_for(r"^\s+token\s+(\S+)")[1]
        yield Dev(stack, workdir, ports, token)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def ada(dev: Dev) -> dict[str, Any]:
    """Ada, registered with the printed token: the stack's first user."""
    created = httpx.post(
        f"{dev.url('API_PORT')}/v1/users",
        json={"email": "ada@example.com", "name": "Ada"},
        headers=dev.auth,
    )
    assert created.status_code == 201
    user: dict[str, Any] = created.json()
    return user


@pytest.fixture(scope="module")
def bounced(dev: Dev, ada: dict[str, Any]) -> str:
    """The hard-bounce address, registered after Ada: the sandbox bounces the welcome email
    and posts the webhook, and the notifier suppresses the address (the only suppression)."""
    httpx.post(
        f"{dev.url('API_PORT')}/v1/users",
        json={"email": BOUNCY, "name": "Bouncy"},
        headers=dev.auth,
    ).raise_for_status()
    deadline = time.monotonic() + 30
    while True:
        listed = httpx.get(f"{dev.url('NOTIFIER_PORT')}/v1/suppressions", headers=dev.auth).json()[
            "items"
        ]
        if [s["email"] for s in listed] == [BOUNCY]:
            return BOUNCY
        assert time.monotonic() < deadline, f"not suppressed: {listed}"
        time.sleep(0.1)


def test_a_registration_reaches_the_outbox_the_broker_and_the_dev_inbox(
    dev: Dev, ada: dict[str, Any]
) -> None:
    base, inbox = dev.url("API_PORT"), dev.url("SANDBOX_PORT")
    pg_port = dev.ports["POSTROOM_DEV_PG_PORT"]
    recent = postroom(
        "outbox",
        "recent",
        env={**os.environ, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{pg_port}/postroom"},
    )
    assert "user.registered" in recent
    assert ada["id"] in recent
    # ... and the relay put it on the broker.
    tailed = postroom(
        *("events", "tail", "--from-beginning", "--limit", "1", "--wait", "20"),
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": dev.kafka},
    )
    record = json.loads(tailed.splitlines()[0])
    assert record["type"] == "user.registered"
    assert record["key"] == ada["id"]
    assert record["data"]["email"] == "ada@example.com"
    # ... and the notifier sent the welcome email into the dev inbox; its link verifies.
    deadline = time.monotonic() + 30
    while not (mail := httpx.get(f"{inbox}/api/messages", params={"to": "ada@example.com"}).json()):
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
    verified = httpx.get(f"{base}/v1/users/{ada['id']}", headers=dev.auth)
    assert verified.json()["email_verified"] is True
    assert "ada@example.com" in httpx.get(inbox).text


def test_a_hard_bounce_is_announced_and_keeps_later_mail_from_the_address(
    dev: Dev, bounced: str
) -> None:
    base, notifier = dev.url("API_PORT"), dev.url("NOTIFIER_PORT")
    email_events = postroom(
        *("events", "tail", "--aggregate", "email", "--from-beginning", "--wait", "5"),
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": dev.kafka},
    )
    kinds = [json.loads(line)["type"] for line in email_events.splitlines()]
    assert "email.bounced" in kinds

    # The address is freed, then another user changes to it: the verification email for the
    # new address is suppressed, not sent.
    bouncy_user = httpx.get(
        f"{notifier}/v1/notifications", params={"email": bounced}, headers=dev.auth
    ).json()["items"][0]["user_id"]
    assert httpx.delete(f"{base}/v1/users/{bouncy_user}", headers=dev.auth).status_code == 204
    other = httpx.post(
        f"{base}/v1/users", json={"email": "other@example.com", "name": "Other"}, headers=dev.auth
    ).json()
    moved = httpx.patch(f"{base}/v1/users/{other['id']}", json={"email": bounced}, headers=dev.auth)
    assert moved.status_code == 200
    deadline = time.monotonic() + 30
    while True:
        held = httpx.get(
            f"{notifier}/v1/notifications", params={"email": bounced}, headers=dev.auth
        ).json()["items"]
        verify = [n for n in held if n["template"] == "verify_new_email"]
        if verify and verify[0]["status"] != "pending":
            break
        assert time.monotonic() < deadline, f"no verification notification: {held}"
        time.sleep(0.1)
    assert verify[0]["status"] == "suppressed"
    sent_to_bouncy = httpx.get(
        f"{dev.url('SANDBOX_PORT')}/api/messages", params={"to": bounced}
    ).json()
    assert [m["Tag"] for m in sent_to_bouncy] == ["welcome"]


def test_the_operator_verbs_read_the_dev_settings_from_the_checkout(dev: Dev, bounced: str) -> None:
    # No settings in the environment: the verbs read what `make dev` filled in.
    suppressions = postroom("suppressions", "list", cwd=dev.workdir, env=clean_env())
    assert bounced in suppressions
    status = postroom("outbox", "status", cwd=dev.workdir, env=clean_env())
    assert "pending" in status
