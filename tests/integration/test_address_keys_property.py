"""The database and Python give one answer to "is this the same address?" (invariant 10),
whatever the database's locale: addresses from many scripts, in both cases, composed and
decomposed, go through the real api (registration and change of address), the real operator
route and webhooks (suppression), the notifier's real claim statements, and the real deletion
(erasure); each outcome must be exactly what `address_key` says.

It runs on the server's default database (the C locale `make dev` uses, which folds ASCII
only) and on databases created with UTF-8 locales, whose own lower() folds other letters
its own way (final sigma, the dotted capital I, sharp s), so no rule of SQL's can stand in.
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from pydantic import EmailStr, TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from migrations import upgrade
from notifier.plans import PlannedEmail, SourceRecord, plan
from notifier.store import NotificationStore
from postroom import events
from postroom.addresses import address_key
from postroom.db import create_engine
from postroom.outbox import OutboxWriter
from tests.support.postgres import PostgresServer
from tests.support.postmark import Sandbox
from tests.support.settings import (
    WEBHOOK_PASSWORD,
    WEBHOOK_USER,
    make_api_settings,
    make_notifier_settings,
)
from tests.support.stack import operator_api

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "postmark"

# The server's default (C on the embedded server), and UTF-8 locales made from template0.
LOCALES = {
    "server-default": None,
    "builtin-C.UTF-8": "LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8'",
    "builtin-PG_UNICODE_FAST": "LOCALE_PROVIDER builtin BUILTIN_LOCALE 'PG_UNICODE_FAST'",
    "libc-C.UTF-8": "LOCALE_PROVIDER libc LOCALE 'C.UTF-8'",
}

SCRIPTS = {
    "latin": "ÀÁÂÄÅÇÈÉÊËÍÎÏÑÓÔÖØÚÜÝàáâäåçèéêëíîïñóôöøúüýÿĀāĄąĆćČčĎďĘęĚěŁłŃńŐőŒœŘřŠšŮůŸŽžǄǅǆŉabcxyz",
    "greek": "ΑΒΓΔΕΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩαβγδεθικλμνξοπρστυφχψωςάέήίόύώΆΈΉΊΌΎΏϊϋΐΰᾳᾼ",
    "cyrillic": "АБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдеёжзийклмнопрстуфхцчшщъыьэюя",
    "turkish": "İ\u0131IiŞşĞğÇçÖöÜü",
    "german": "ßẞSsÄäÖöÜüt",
    "armenian": "ԱԲԳԴԵԶԷԹԻԼԽԿՀՄՅՆՇՈՊՍՎՏՐՒՓՔՕՖաբգդեզէթիլխկհմյնշոպսվտրւփքօֆև",
    "cherokee": "".join(map(chr, [*range(0x13A0, 0x13F6), *range(0x13F8, 0x13FE)]))
    + "".join(map(chr, range(0xAB70, 0xABC0))),
    "cjk": "漢字郵便東京北京한국어ひらがなカタカナ",
}

# Ways one person may write their address again: other cases, the other normal form.
VARIANTS: dict[str, Callable[[str], str]] = {
    "as-is": lambda s: s,
    "upper": str.upper,
    "lower": str.lower,
    "casefold": str.casefold,
    "title": str.title,
    "swapcase": str.swapcase,
    "nfd": lambda s: unicodedata.normalize("NFD", s),
    "nfc": lambda s: unicodedata.normalize("NFC", s),
    "upper-nfd": lambda s: unicodedata.normalize("NFD", s.upper()),
}

EMAIL = TypeAdapter(EmailStr)


def valid(address: str) -> bool:
    try:
        EMAIL.validate_python(address)
    except ValidationError:
        return False
    return True


@st.composite
def local_parts(draw: st.DrawFn) -> str:
    scripts = draw(st.lists(st.sampled_from(sorted(SCRIPTS)), min_size=1, max_size=2))
    letters = "".join(SCRIPTS[name] for name in scripts)
    return draw(st.text(alphabet=letters, min_size=1, max_size=8))


@st.composite
def families(draw: st.DrawFn) -> list[str]:
    """Local parts one person might write for one mailbox (their keys usually agree, not
    always: the dotless i upper-cased is `I`, whose key is `i`)."""
    base = draw(local_parts())
    names = draw(st.lists(st.sampled_from(sorted(VARIANTS)), min_size=2, max_size=4))
    return [VARIANTS[name](base) for name in names]


@dataclass
class Example:
    """One example's addresses: families of spellings, under a domain of its own."""

    domain: str
    families: list[list[str]]
    suppress_by_webhook: list[bool]

    def address(self, local: str) -> str:
        return f"{local}.x@{self.domain}"

    @property
    def all(self) -> list[str]:
        return [self.address(local) for family in self.families for local in family]


# The domain is the run's own (hypothesis replays an example while shrinking it, and the
# database keeps what earlier runs wrote).
examples = st.builds(
    Example,
    domain=st.builds(lambda: f"k{uuid.uuid4().hex[:12]}.example.com"),
    families=st.lists(families(), min_size=1, max_size=3),
    suppress_by_webhook=st.lists(st.booleans(), min_size=3, max_size=3),
)


@pytest.fixture(scope="session")
def locale_templates(postgres: PostgresServer) -> Iterator[dict[str, str]]:
    """Migrated templates in the UTF-8 locales, made when first asked for."""
    made: dict[str, str] = {}
    try:
        yield made
    finally:
        for template in made.values():
            postgres.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')


@pytest.fixture(params=sorted(LOCALES))
def database_url(
    request: pytest.FixtureRequest, postgres: PostgresServer, locale_templates: dict[str, str]
) -> Iterator[str]:
    """A fresh migrated database in each locale (this module's own `database_url`, so the
    api and `db` fixtures use it)."""
    locale = request.param
    template = postgres.template
    if LOCALES[locale] is not None:
        if locale not in locale_templates:
            made = f"postroom_locale_{uuid.uuid4().hex[:8]}"
            postgres.execute(f'CREATE DATABASE "{made}" TEMPLATE template0 {LOCALES[locale]}')
            upgrade(postgres.url(made))
            locale_templates[locale] = made
        template = locale_templates[locale]
    name = f"postroom_test_{uuid.uuid4().hex[:12]}"
    postgres.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield postgres.url(name)
    finally:
        postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def notifier(database_url: str, sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_notifier_settings(database_url, "127.0.0.1:9", sandbox.url, "t-keys")
    async with operator_api(settings) as client:
        yield client


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[NotificationStore]:
    engine: AsyncEngine = create_engine(make_api_settings(database_url), application_name="keys")
    try:
        yield NotificationStore(
            engine,
            OutboxWriter(shards=8),
            lease=30.0,
            settle=60.0,
            reach=10.5,
            search_window=44 * 86400.0,
        )
    finally:
        await engine.dispose()


def welcome(recipient: str) -> tuple[PlannedEmail, SourceRecord]:
    """The welcome the real planner makes of a registration of `recipient`."""
    data = events.UserRegistered(
        user_id=uuid.uuid4(),
        version=1,
        email=recipient,
        name="Keys",
        registered_at=datetime.now(UTC),
    )
    source = SourceRecord(
        topic="t.user",
        partition=0,
        offset=0,
        key=str(data.user_id),
        headers=(("ce_id", str(uuid.uuid4())), ("ce_type", data.event_type)),
        value=data.model_dump_json(),
    )
    [email] = plan(source.event())
    return email, source


async def record(store: NotificationStore, recipients: list[str], claim: str) -> dict[str, Any]:
    """Record a welcome to each recipient; the recipient of each recorded as suppressed."""
    made = [welcome(r) for r in recipients]
    claimed, suppressed = await store.record(
        [p for p, _ in made],
        {p.event_id: s for p, s in made},
        not_allowed={},
        attempt_id=uuid.uuid4().hex,
        claim=claim,
    )
    assert len(claimed) + len(suppressed) == len(recipients)
    return {
        "ids": {p.id: p.recipient for p, _ in made},
        "suppressed": sorted(p.recipient for p, _ in suppressed),
    }


async def suppress(notifier: httpx.AsyncClient, address: str, *, by_webhook: bool) -> None:
    """Suppress `address` as written: by an operator, or by Postmark's SubscriptionChange."""
    if by_webhook or not valid(address):
        body = json.loads((FIXTURES / "subscription_change.json").read_text())
        body.update(Recipient=address, ChangedAt=datetime.now(UTC).isoformat())
        answer = await notifier.post(
            "/webhooks/postmark", json=body, auth=(WEBHOOK_USER, WEBHOOK_PASSWORD)
        )
        assert answer.status_code == 200, answer.text
    else:
        answer = await notifier.post("/v1/suppressions", json={"email": address})
        assert answer.status_code in (201, 409), answer.text


async def check_users(api: httpx.AsyncClient, example: Example) -> dict[str, str]:
    """Register every spelling, then move a user onto each: 409 exactly when the key is
    another user's. Returns who holds each key."""
    holders: dict[str, str] = {}
    for address in example.all:
        answer = await api.post("/v1/users", json={"email": address, "name": "Keys"})
        key = address_key(address)
        expected = 422 if not valid(address) else 409 if key in holders else 201
        assert answer.status_code == expected, (address, key, answer.text)
        if expected == 201:
            holders[key] = answer.json()["id"]
    mover = await api.post("/v1/users", json={"email": f"mover@{example.domain}", "name": "Mover"})
    mover_id, mover_key = mover.json()["id"], f"mover@{example.domain}"
    holders[mover_key] = mover_id
    for address in example.all:
        answer = await api.patch(f"/v1/users/{mover_id}", json={"email": address})
        key = address_key(address)
        taken = holders.get(key, mover_id) != mover_id
        expected = 422 if not valid(address) else 409 if taken else 200
        assert answer.status_code == expected, (address, key, answer.text)
        if expected == 200:
            del holders[mover_key]
            holders[key] = mover_id
            mover_key = key
    return holders


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(example=examples)
async def test_python_and_the_database_agree_on_which_addresses_are_one(
    example: Example,
    client: httpx.AsyncClient,
    notifier: httpx.AsyncClient,
    store: NotificationStore,
    db: asyncpg.Connection,
) -> None:
    note(f"addresses: {example.all}")
    everyone = example.all
    unrelated = [example.address(f"other{n}") for n in range(2)]

    # Users: one per key, on registration and on a change of address.
    holders = await check_users(client, example)

    # Suppressions: one spelling of each family, through an operator or a webhook; the
    # claim's, the record's and the start's checks block exactly that key's spellings.
    before = await record(store, [*everyone, *unrelated], claim="before")
    await store.release(dict.fromkeys(before["ids"], 0.0), claim="before")
    suppressed_keys = set()
    for family, by_webhook in zip(example.families, example.suppress_by_webhook, strict=False):
        await suppress(notifier, example.address(family[0]), by_webhook=by_webhook)
        suppressed_keys.add(address_key(example.address(family[0])))

    def blocked(recipient: str) -> bool:
        return address_key(recipient) in suppressed_keys

    after = await record(store, [*everyone, *unrelated], claim="after")
    assert after["suppressed"] == sorted(r for r in [*everyone, *unrelated] if blocked(r))
    claimed = await store.claim(list(before["ids"]), claim="again")
    assert {row.id for row in claimed} == set(before["ids"])
    assert {before["ids"][row.id] for row in claimed if row.suppressed} == {
        r for r in before["ids"].values() if blocked(r)
    }
    started = await store.start_attempt(dict(before["ids"]), "attempt", claim="again")
    assert {before["ids"][i] for i, reason in started.items() if reason} == {
        r for r in before["ids"].values() if blocked(r)
    }

    # Erasure: a soft bounce for every spelling (no suppression), then each user deleted
    # erases exactly the bounces and finished notifications of their key.
    bounce = json.loads((FIXTURES / "bounce_hard.json").read_text())
    bounce_ids: dict[int, str] = {}
    for address in [*everyone, *unrelated]:
        bounce_id = uuid.uuid4().int >> 66  # hypothesis seeds `random` alike each run
        bounce.update(ID=bounce_id, Email=address, MessageID=str(uuid.uuid4()), Type="SoftBounce")
        bounce.update(Inactive=False, CanActivate=True)
        answer = await notifier.post(
            "/webhooks/postmark", json=bounce, auth=(WEBHOOK_USER, WEBHOOK_PASSWORD)
        )
        assert answer.status_code == 200, answer.text
        bounce_ids[bounce_id] = address
    deleted = {key for key in holders if not key.startswith("mover@")}
    for key in deleted:
        assert (await client.delete(f"/v1/users/{holders[key]}")).status_code == 204

    rows = await db.fetch(
        "SELECT id, email FROM bounces WHERE id = ANY($1::bigint[])", list(bounce_ids)
    )
    erased = {bounce_ids[r["id"]] for r in rows if r["email"] == ""}
    assert erased == {a for a in bounce_ids.values() if address_key(a) in deleted}
    finished = await db.fetch(
        "SELECT id, recipient FROM notifications WHERE id = ANY($1::uuid[])",
        list(after["ids"]),
    )
    gone = {after["ids"][r["id"]] for r in finished if r["recipient"] == ""}
    assert gone == {a for a in after["suppressed"] if address_key(a) in deleted}


async def test_the_databases_own_lower_would_not_do(db: asyncpg.Connection) -> None:
    """Why no SQL rule stands in for the key: in every locale here, lower() tells apart
    spellings the key joins (a sharp s, a final sigma, a decomposed letter)."""
    spellings = ["Straße@x.io", "STRASSE@x.io", "ΟΔΟΣ@x.io", "οδος@x.io", "E\u0301MILE@x.io"]
    lowered = [await db.fetchval("SELECT lower($1)", s) for s in spellings]
    keys = [address_key(s) for s in spellings]
    assert len(set(keys)) == 3
    assert len(set(lowered)) > len(set(keys))
