"""Operators manage the suppression list; lifting a bounce reactivates it at Postmark (the
sandbox, through postmarker)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from tests.support.postmark import Sandbox, sandbox_client
from tests.support.settings import (
    API_TOKEN,
    POSTMARK_TOKEN,
    WEBHOOK_PASSWORD,
    WEBHOOK_USER,
    make_notifier_settings,
)
from tests.support.stack import operator_api


@pytest.fixture
async def notifier(database_url: str, sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_notifier_settings(database_url, "127.0.0.1:9", sandbox.url, "t-admin")
    async with operator_api(settings) as client:
        yield client


async def event_types(db: asyncpg.Connection) -> list[str]:
    return [r["event_type"] for r in await db.fetch("SELECT event_type FROM outbox ORDER BY id")]


async def test_an_operator_adds_and_lifts_a_manual_suppression(
    notifier: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    added = await notifier.post(
        "/v1/suppressions", json={"email": "Quiet@Example.com", "details": "asked by phone"}
    )
    assert added.status_code == 201
    assert added.json()["email"] == "quiet@example.com"
    assert added.json()["origin"] == "Operator"
    again = await notifier.post("/v1/suppressions", json={"email": "quiet@example.com"})
    assert again.status_code == 409

    lifted = await notifier.delete("/v1/suppressions/quiet@example.com")

    assert lifted.status_code == 204
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    assert await event_types(db) == ["email.suppressed", "email.reactivated"]
    assert (await notifier.delete("/v1/suppressions/quiet@example.com")).status_code == 404


async def test_a_spam_complaint_cannot_be_lifted(
    notifier: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO suppressions (email, reason, origin) VALUES ('angry@example.org', "
        "'SpamComplaint', 'Postmark')"
    )
    answer = await notifier.delete("/v1/suppressions/angry@example.org")
    assert answer.status_code == 409
    assert answer.json()["type"] == "urn:postroom:problem:spam-complaint"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 1


async def test_lifting_a_bounce_reactivates_the_address_at_postmark(
    notifier: httpx.AsyncClient, db: asyncpg.Connection, sandbox: Sandbox
) -> None:
    address = f"bounce-{uuid.uuid4().hex[:8]}@example.com"
    postmark = httpx.AsyncClient(
        base_url=sandbox.url, headers={"X-Postmark-Server-Token": POSTMARK_TOKEN}
    )
    sent = await postmark.post(
        "/email",
        json={
            "From": "hello@postroom.test",
            "To": address,
            "Subject": "s",
            "TextBody": "t",
            "Headers": [{"Name": "X-PM-Bounce-Type", "Value": "HardBounce"}],
        },
    )
    assert sent.status_code == 200
    # The sandbox made the address inactive; hand its bounce webhook to the notifier, as
    # Postmark would.
    deadline = time.monotonic() + 10
    while not (
        hooks := [
            h for h in (await postmark.get("/api/webhooks")).json() if h["Recipient"] == address
        ]
    ):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    bounce = hooks[0]["Payload"]
    answer = await notifier.post(
        "/webhooks/postmark",
        content=json.dumps(bounce),
        auth=(WEBHOOK_USER, WEBHOOK_PASSWORD),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 200
    blocked = await postmark.post(
        "/email",
        json={
            "From": "hello@postroom.test",
            "To": address,
            "Subject": "s",
            "TextBody": "t",
        },
    )
    assert blocked.json()["ErrorCode"] == 406

    lifted = await notifier.delete(f"/v1/suppressions/{address}")

    assert lifted.status_code == 204
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    reopened = await postmark.post(
        "/email",
        json={
            "From": "hello@postroom.test",
            "To": address,
            "Subject": "s",
            "TextBody": "t",
        },
    )
    assert reopened.json()["ErrorCode"] == 0
    assert await event_types(db) == ["email.bounced", "email.reactivated"]
    await postmark.aclose()


async def test_when_postmark_refuses_to_reactivate_nothing_changes(
    notifier: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await db.execute(
        """
        INSERT INTO bounces (id, record_type, type, email, email_key, inactive, can_activate,
                             raw)
        VALUES (9123372036854775001, 'Bounce', 'HardBounce', 'ghost@example.com',
                'ghost@example.com', true, true, '{}');
        INSERT INTO suppressions (email, reason, origin)
        VALUES ('ghost@example.com', 'HardBounce', 'Postmark');
        """
    )
    answer = await notifier.delete("/v1/suppressions/ghost@example.com")
    assert answer.status_code == 502
    assert answer.json()["type"] == "urn:postroom:problem:postmark-refused"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 1
    assert await event_types(db) == []


async def test_when_postmark_is_slow_to_reactivate_the_operator_hears_so_in_time(
    database_url: str, db: asyncpg.Connection, sandbox: Sandbox, sandbox_faults: str
) -> None:
    """Postmark's answer trickles in a byte at a time: the reactivation ends at
    POSTMARK_TIMEOUT with a 503 (the API) or one line and exit code 4 (the command), and the
    address stays suppressed."""
    await db.execute(
        """
        INSERT INTO bounces (id, record_type, type, email, email_key, inactive, can_activate,
                             raw)
        VALUES (9123372036854775002, 'Bounce', 'HardBounce', 'slow@example.com',
                'slow@example.com', true, true, '{}');
        INSERT INTO suppressions (email, reason, origin)
        VALUES ('slow@example.com', 'HardBounce', 'Postmark');
        """
    )
    async with sandbox_client(sandbox) as postmark:
        await postmark.put("/api/faults", json={"trickle_ms": 200, "trickle_on": ["reactivate"]})
    settings = make_notifier_settings(
        database_url, "127.0.0.1:9", sandbox.url, "t-admin", postmark_timeout=1.0
    )
    async with operator_api(settings) as notifier:
        started = time.monotonic()
        answer = await notifier.delete("/v1/suppressions/slow@example.com")
        took = time.monotonic() - started
    command = await asyncio.to_thread(
        cli, database_url, sandbox, "remove", "slow@example.com", POSTMARK_TIMEOUT="1"
    )

    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:postroom:problem:postmark-unavailable"
    assert "still suppressed" in answer.json()["detail"]
    assert took < 1.5, took
    assert command.returncode == 4
    assert command.stderr.count("\n") == 1
    assert "still suppressed" in command.stderr
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 1
    assert await event_types(db) == []


def cli(
    database_url: str, sandbox: Sandbox, *args: str, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "API_TOKENS": API_TOKEN,
        "EMAIL_TOKEN_SECRET": "cli-test-email-secret-0123456789abcdef",
        "POSTMARK_SERVER_TOKEN": POSTMARK_TOKEN,
        "POSTMARK_API_URL": sandbox.url + "/",
        "WEBHOOK_USERNAME": WEBHOOK_USER,
        "WEBHOOK_PASSWORD": WEBHOOK_PASSWORD,
        **extra_env,
    }
    return subprocess.run(
        [sys.executable, "-m", "postroom_cli", "suppressions", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_suppressions_verbs(database_url: str, sandbox: Sandbox) -> None:
    added = cli(database_url, sandbox, "add", "Muted@Example.com", "--details", "ticket 42")
    assert (added.returncode, added.stdout.strip()) == (0, "suppressed muted@example.com")
    assert cli(database_url, sandbox, "add", "muted@example.com").returncode == 1

    listed = cli(database_url, sandbox, "list")
    assert listed.returncode == 0
    assert "muted@example.com" in listed.stdout
    assert "ticket 42" in listed.stdout
    as_json = cli(database_url, sandbox, "list", "--json")
    assert as_json.returncode == 0
    [row] = [r for r in json.loads(as_json.stdout) if r["email"] == "muted@example.com"]
    assert (row["reason"], row["origin"], row["details"]) == (
        "ManualSuppression",
        "Operator",
        "ticket 42",
    )

    removed = cli(database_url, sandbox, "remove", "muted@example.com")
    assert (removed.returncode, removed.stdout.strip()) == (0, "lifted muted@example.com")
    again = cli(database_url, sandbox, "remove", "muted@example.com")
    assert again.returncode == 1
    assert "not suppressed" in again.stderr
    assert "no suppressed addresses" in cli(database_url, sandbox, "list").stdout


def test_an_operator_pages_through_the_suppressions(database_url: str, sandbox: Sandbox) -> None:
    for n in range(5):
        assert cli(database_url, sandbox, "add", f"page{n}@example.com").returncode == 0

    listed: list[str] = []
    args = ["list", "--json", "--limit", "2"]
    while True:
        page = cli(database_url, sandbox, *args)
        assert page.returncode == 0, page.stderr
        listed += [row["email"] for row in json.loads(page.stdout)]
        if "more:" not in page.stderr:
            break
        [more] = [line for line in page.stderr.splitlines() if line.startswith("more: ")]
        args = more.split()[3:]  # after "more: postroom suppressions"
        assert len(listed) < 10, "the cursor does not move"

    assert listed == [f"page{n}@example.com" for n in (4, 3, 2, 1, 0)]
    refused = cli(database_url, sandbox, "list", "--cursor", "garbage")
    assert refused.returncode == 2
    assert "--cursor" in refused.stderr


async def test_a_misspelt_filter_is_an_error_not_an_unfiltered_list(
    notifier: httpx.AsyncClient,
) -> None:
    answer = await notifier.get("/v1/notifications", params={"emial": "a@example.com"})
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["loc"] == ["query", "emial"]
    assert (await notifier.get("/v1/notifications", params={"email": "a@example.com"})).json() == {
        "items": [],
        "next_cursor": None,
    }


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("POST", "/v1/suppressions", {"email": "a@example.com", "details": "a\u0000b"}, "details"),
        ("POST", "/v1/suppressions", {"email": "a@example.com", "reason": "x\u0000"}, "reason"),
        ("DELETE", "/v1/suppressions/a%00b@example.com", None, "email"),
        ("GET", "/v1/notifications?email=a%00", None, "email"),
    ],
    ids=["details", "reason", "lift", "search"],
)
async def test_a_nul_in_an_operator_request_is_a_422_naming_the_field(
    notifier: httpx.AsyncClient,
    db: asyncpg.Connection,
    method: str,
    url: str,
    body: dict[str, str] | None,
    field: str,
) -> None:
    answer = await notifier.request(method, url, json=body)

    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert [error["loc"][-1] for error in answer.json()["errors"]] == [field]
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    assert await event_types(db) == []
