"""One address, one identity (invariant 10): the reproductions of issue 18, each through the
real routes. On a database in the C locale, `lower()` in SQL folds ASCII only, so before
address keys `ÉMILE` registered beside `émile`, an operator's suppression of `Émile` or
`Дмитрий` did not stop their mail, and deleting `zoë`'s user left the bounce of `ZOË`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from postroom import tokens
from postroom.addresses import address_key
from tests.support.postmark import Sandbox
from tests.support.settings import (
    EMAIL_SECRET,
    WEBHOOK_PASSWORD,
    WEBHOOK_USER,
    make_notifier_settings,
)
from tests.support.stack import operator_api, running_stack

BOUNCE = Path(__file__).resolve().parents[1] / "fixtures" / "postmark" / "bounce_hard.json"


@pytest.fixture
async def notifier(database_url: str, sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_notifier_settings(database_url, "127.0.0.1:9", sandbox.url, "t-identity")
    async with operator_api(settings) as client:
        yield client


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("émile.x", "ÉMILE.x"),
        ("Дмитрий.x", "ДМИТРИЙ.X"),
        ("Straße.x", "STRASSE.x"),
        ("οδος.x", "ΟΔΟΣ.x"),
        ("Émile.x", "e\u0301mile.x"),
    ],
    ids=["latin", "cyrillic", "sharp-s", "final-sigma", "decomposed"],
)
async def test_the_same_mailbox_in_another_case_or_encoding_is_taken(
    client: httpx.AsyncClient, db: asyncpg.Connection, first: str, then: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    registered = await client.post(
        "/v1/users", json={"email": f"{first}-{tag}@example.com", "name": "First"}
    )
    again = await client.post(
        "/v1/users", json={"email": f"{then}-{tag}@example.com", "name": "Second"}
    )
    other = await client.post(
        "/v1/users", json={"email": f"other-{tag}@example.com", "name": "Other"}
    )
    moved = await client.patch(
        f"/v1/users/{other.json()['id']}", json={"email": f"{then}-{tag}@example.com"}
    )

    assert (registered.status_code, again.status_code) == (201, 409)
    assert again.json()["type"] == "urn:postroom:problem:email-taken"
    assert moved.status_code == 409
    assert await db.fetchval("SELECT count(*) FROM users") == 2
    assert await db.fetchval("SELECT count(*) FROM outbox") == 2  # two registrations, no more


async def test_deleting_a_user_erases_the_bounces_of_every_spelling_of_the_address(
    client: httpx.AsyncClient, notifier: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    tag = uuid.uuid4().hex[:8]
    user = await client.post("/v1/users", json={"email": f"zoë.x-{tag}@example.com", "name": "Zoë"})
    bounce_id = uuid.uuid4().int >> 66
    body: dict[str, Any] = json.loads(BOUNCE.read_text())
    body.update(
        ID=bounce_id,
        MessageID=str(uuid.uuid4()),
        Email=f"ZOË.x-{tag}@example.com",
        Details=f"smtp;550 ZOË.x-{tag}@example.com unknown",
    )
    hooked = await notifier.post(
        "/webhooks/postmark", json=body, auth=(WEBHOOK_USER, WEBHOOK_PASSWORD)
    )
    assert hooked.status_code == 200

    deleted = await client.delete(f"/v1/users/{user.json()['id']}")

    assert deleted.status_code == 204
    bounce = await db.fetchrow("SELECT email, details, raw FROM bounces WHERE id = $1", bounce_id)
    assert bounce is not None
    assert (bounce["email"], bounce["details"], json.loads(bounce["raw"])) == ("", None, {})


@pytest.mark.kafka
async def test_addresses_the_operator_suppressed_are_never_mailed_whatever_their_script(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    tag = uuid.uuid4().hex[:8]
    suppressed = [
        f"Émile.x-{tag}@example.com",
        f"Дмитрий.x-{tag}@example.com",
        # Forms the api normalizes before it stores them: every entry point keys them alike.
        f"v-{tag}@xn--bcher-kva.example",
        f"u-{tag}@example\u3002com",
    ]
    control = f"ascii.x-{tag}@example.com"
    async with running_stack(database_url, kafka_bootstrap, sandbox) as stack:
        for email in suppressed:
            added = await stack.notifier.post("/v1/suppressions", json={"email": email})
            assert added.status_code == 201
        for email in [*suppressed, control]:
            created = await stack.api.post("/v1/users", json={"email": email, "name": "X"})
            assert created.status_code == 201
        # Every welcome reached a final status; the control's went out, so the others could.
        async with asyncio.timeout(30):
            while (
                await db.fetchval("SELECT count(*) FROM notifications WHERE status <> 'pending'")
                < len(suppressed) + 1
            ):
                await asyncio.sleep(0.05)
        assert len(await stack.wait_messages(control)) == 1
        everything = (await stack.sandbox.get("/api/messages")).json()

    mailed = [m["To"] for m in everything if tag in m["To"] and m["To"] != control]
    assert mailed == []
    statuses = await db.fetch("SELECT recipient_key, status FROM notifications")
    assert {(r["recipient_key"], r["status"]) for r in statuses} == {
        (control, "sent"),
        *((address_key(email), "suppressed") for email in suppressed),
    }


# Forms of one address the api stores normalized (pydantic's EmailStr): what Postmark, an
# operator or the command may write instead.
FORMS = [
    ("v-{tag}@xn--bcher-kva.example", "v-{tag}@bücher.example"),
    ("v-{tag}@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", "v-{tag}@example.com"),
    ("v-{tag}@example\u3002com", "v-{tag}@example.com"),
    ("V <v-{tag}@Example.COM>", "v-{tag}@example.com"),
]


@pytest.mark.parametrize(("form", "stored"), FORMS, ids=["xn--", "full-width", "dot", "named"])
async def test_every_entry_point_keys_an_address_as_the_api_stores_it(
    client: httpx.AsyncClient,
    notifier: httpx.AsyncClient,
    db: asyncpg.Connection,
    form: str,
    stored: str,
) -> None:
    tag = uuid.uuid4().hex[:8]
    user = await client.post("/v1/users", json={"email": stored.format(tag=tag), "name": "V"})
    body: dict[str, Any] = json.loads(BOUNCE.read_text())
    body.update(ID=uuid.uuid4().int >> 66, MessageID=str(uuid.uuid4()), Email=form.format(tag=tag))
    hooked = await notifier.post(
        "/webhooks/postmark", json=body, auth=(WEBHOOK_USER, WEBHOOK_PASSWORD)
    )
    other = uuid.uuid4().hex[:8]
    added = await notifier.post("/v1/suppressions", json={"email": form.format(tag=other)})
    lifted = await notifier.delete(f"/v1/suppressions/{stored.format(tag=other)}")

    assert (user.status_code, hooked.status_code, added.status_code) == (201, 200, 201)
    # The bounce, in Postmark's form, suppressed the user's own key; the operator's entry, in
    # one form, is lifted in the other.
    [user_key] = [r[0] for r in await db.fetch("SELECT email_key FROM users")]
    assert [r[0] for r in await db.fetch("SELECT email FROM suppressions")] == [user_key]
    assert lifted.status_code == 204


async def test_domains_dns_tells_apart_are_two_addresses(client: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex[:8]
    answers = [
        (await client.post("/v1/users", json={"email": email, "name": "A"})).status_code
        for email in (
            f"a-{tag}@strasse.de",
            f"a-{tag}@straße.de",
            f"a-{tag}@xn--strae-oqa.de",  # straße.de again
            f"a-{tag}@σοφος.gr",
            f"a-{tag}@ΣΟΦΟΣ.gr",  # σοφοσ.gr: the medial sigma, another domain
        )
    ]
    assert answers == [201, 201, 409, 201, 201]


@pytest.mark.parametrize(
    ("first", "then", "proven"),
    [
        ("Émile-{tag}@example.com", "ÉMILE-{tag}@EXAMPLE.com", True),
        ("strasse-{tag}@example.com", "straße-{tag}@example.com", False),
        ("fi-{tag}@example.com", "\ufb01-{tag}@example.com", False),
    ],
    ids=["letter-case", "sharp-s", "ligature"],
)
async def test_a_new_spelling_of_a_verified_address_is_proven_again_unless_only_case(
    client: httpx.AsyncClient, db: asyncpg.Connection, first: str, then: str, proven: bool
) -> None:
    tag = uuid.uuid4().hex[:8]
    user = (
        await client.post("/v1/users", json={"email": first.format(tag=tag), "name": "A"})
    ).json()
    link = tokens.issue_token(EMAIL_SECRET, user_id=uuid.UUID(user["id"]), email=user["email"])
    assert (await client.post("/v1/email-verifications", json={"token": link})).status_code == 200

    moved = await client.patch(f"/v1/users/{user['id']}", json={"email": then.format(tag=tag)})
    old_link = await client.post("/v1/email-verifications", json={"token": link})

    assert moved.status_code == 200
    assert moved.json()["email_verified"] is proven
    kinds = [r[0] for r in await db.fetch("SELECT event_type FROM outbox ORDER BY id")]
    assert ("user.email_changed" in kinds) is not proven
    # The old spelling's link proves only a mailbox that is still the user's.
    assert (old_link.status_code == 200) is proven
