"""Migration 0008 on a database written the old way (addresses compared with lower(), on the
C-locale server the tests run): every row gets its address key, suppressions of one key
become one by the suppression rules and each merge is reported, and users sharing a key stop
the migration with their ids, never their addresses (real PostgreSQL, the real command)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg
import pytest
from alembic import command
from alembic.script import ScriptDirectory

from migrations import MigrationRefused, alembic_config, upgrade
from postroom.addresses import address_key
from postroom_cli.main import main
from tests.support.postgres import PostgresServer, run_async

T1 = datetime(2026, 1, 1, tzinfo=UTC)
T2 = datetime(2026, 2, 1, tzinfo=UTC)
T3 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def old_database(postgres: PostgresServer) -> Iterator[str]:
    """A database at migration 0007, the schema before address keys."""
    name = f"postroom_old_{uuid.uuid4().hex[:12]}"
    postgres.execute(f'CREATE DATABASE "{name}"')
    try:
        url = postgres.url(name)
        upgrade(url, "0007")
        yield url
    finally:
        postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sql(url: str, statement: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(statement, *args)
        finally:
            await conn.close()

    return run_async(run)


def add_user(url: str, email: str, at: datetime) -> uuid.UUID:
    user_id = uuid.uuid4()
    sql(
        url,
        "INSERT INTO users (id, email, name, created_at) VALUES ($1, $2, 'Old', $3)",
        user_id,
        email,
        at,
    )
    return user_id


def migrate(url: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """`postroom migrate`, as an operator runs it; its exit code."""
    monkeypatch.setenv("DATABASE_URL", url)
    try:
        main(["migrate"])
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_old_rows_get_their_keys_and_suppressions_of_one_key_become_one(
    old_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = old_database
    # Rows as 8a64e62 wrote them: the suppression list keyed by Python's lower(), the rest as
    # given; lower() in SQL told these spellings apart.
    ada = add_user(url, "Ada@Example.com", T1)
    emile = add_user(url, "Émile.x@example.com", T1)
    sql(
        url,
        """
        INSERT INTO notifications (id, event_id, event_type, user_id, template, recipient,
                                   status)
        VALUES ($1, $2, 'user.registered', $3, 'welcome', 'E\u0301MILE.x@example.com', 'sent')
        """,
        uuid.uuid4(),
        uuid.uuid4(),
        emile,
    )
    sql(
        url,
        """
        INSERT INTO bounces (id, record_type, type, email, inactive, can_activate, raw)
        VALUES (7, 'Bounce', 'HardBounce', 'ZOË.x@example.com', true, true, '{}'),
               (8, 'Bounce', 'HardBounce', '', true, true, '{}')
        """,
    )
    sql(
        url,
        """
        INSERT INTO suppressions (email, reason, origin, created_at, changed_at) VALUES
            -- one address, three spellings: the complaint is kept, though older
            ('straße@example.com', 'HardBounce', 'Postmark', $1, $3),
            ('strasse@example.com', 'SpamComplaint', 'Postmark', $1, $1),
            ('\ufb06rasse@example.com', 'ManualSuppression', 'Operator', $1, $2),
            -- two spellings, no complaint: the newer is kept
            ('οδος@example.com', 'HardBounce', 'Postmark', $1, $1),
            ('οδοσ@example.com', 'ManualSuppression', 'Operator', $2, $2),
            -- alone, but not a key yet (its É was never lowered in SQL)
            ('dmitry@example.com', 'HardBounce', 'Postmark', $1, $1)
        """,
        T1,
        T2,
        T3,
    )
    sql(
        url,
        """
        INSERT INTO suppression_lifts (email, changed_at) VALUES
            ('οδος@example.com', $1), ('οδοσ@example.com', $2), ('ann@example.com', $1)
        """,
        T1,
        T3,
    )

    assert migrate(url, monkeypatch) == 0

    out = capsys.readouterr().out
    users = {r["id"]: r["email_key"] for r in sql(url, "SELECT id, email_key FROM users")}
    assert users == {ada: "ada@example.com", emile: "émile.x@example.com"}
    [recipient_key] = [r[0] for r in sql(url, "SELECT recipient_key FROM notifications")]
    assert recipient_key == "émile.x@example.com"
    bounces = sql(url, "SELECT id, email_key FROM bounces ORDER BY id")
    assert [tuple(r) for r in bounces] == [(7, "zoë.x@example.com"), (8, "")]
    suppressed = {
        r["email"]: (r["reason"], r["changed_at"])
        for r in sql(url, "SELECT email, reason, changed_at FROM suppressions")
    }
    assert suppressed == {
        "strasse@example.com": ("SpamComplaint", T1),
        "οδοσ@example.com": ("ManualSuppression", T2),
        "dmitry@example.com": ("HardBounce", T1),
    }
    lifts = {r[0]: r[1] for r in sql(url, "SELECT email, changed_at FROM suppression_lifts")}
    assert lifts == {"οδοσ@example.com": T3, "ann@example.com": T1}
    # Each merge is reported, by what was kept and removed, never by address.
    merges = [line for line in out.splitlines() if "spellings of one address" in line]
    assert len(merges) == 3, out
    assert any(
        "suppressions: 3 spellings" in line
        and "kept SpamComplaint (Postmark, 2026-01-01" in line
        and "HardBounce (Postmark, 2026-03-01" in line
        and "ManualSuppression (Operator, 2026-02-01" in line
        for line in merges
    ), out
    assert any("suppression_lifts: 2 spellings" in line for line in merges), out
    assert "@" not in out.replace("database migrated", "")
    # The keys are this function's, stored: what every statement compares from now on.
    for email, _ in suppressed.items():
        assert address_key(email) == email


def test_users_sharing_a_key_stop_the_migration_with_their_ids(
    old_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = old_database
    first = add_user(url, "émile.y@example.com", T1)
    second = add_user(url, "ÉMILE.Y@example.com", T2)
    third = add_user(url, "e\u0301mile.y@example.com", T3)
    add_user(url, "Stra\u00dfe@example.com", T1)
    fifth = add_user(url, "STRASSE@example.com", T2)

    assert migrate(url, monkeypatch) == 1

    err = capsys.readouterr().err
    assert f"users {first}, {second}, {third} share one address" in err
    assert f"{fifth} share one address" in err
    assert "2 addresses belong to more than one user" in err
    assert "docs/operations.md" in err
    assert "@" not in err
    # Nothing changed: still the old schema, every user there.
    version = sql(url, "SELECT version_num FROM alembic_version")[0][0]
    assert version == "0007"
    assert len(sql(url, "SELECT id FROM users")) == 5

    # What docs/operations.md says to do: keep one of each, then migrate again.
    sql(url, "DELETE FROM users WHERE id = ANY($1::uuid[])", [second, third, fifth])
    assert migrate(url, monkeypatch) == 0
    keys = sorted(r[0] for r in sql(url, "SELECT email_key FROM users"))
    assert keys == ["strasse@example.com", "émile.y@example.com"]


def test_the_backfill_keys_tables_bigger_than_a_batch(old_database: str) -> None:
    url = old_database
    count = 12_345  # more than two of the migration's batches
    sql(
        url,
        """
        INSERT INTO notifications (id, event_id, event_type, template, recipient, status)
        SELECT gen_random_uuid(), gen_random_uuid(), 'user.registered', 'welcome',
               'User-' || n || '@Example.COM', 'sent'
        FROM generate_series(1, $1) AS n
        """,
        count,
    )
    upgrade(url)
    rows = sql(url, "SELECT recipient, recipient_key FROM notifications")
    assert len(rows) == count
    assert all(r["recipient_key"] == address_key(r["recipient"]) for r in rows)


@pytest.fixture
def database_at_0010(postgres: PostgresServer) -> Iterator[str]:
    """A database at migration 0010, its keys written by 0008's rule (the whole address
    caseless-matched, the domain too)."""
    name = f"postroom_0010_{uuid.uuid4().hex[:12]}"
    postgres.execute(f'CREATE DATABASE "{name}"')
    try:
        url = postgres.url(name)
        upgrade(url, "0010")
        yield url
    finally:
        postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_0011_keys_domains_as_dns_and_no_suppression_covers_less(
    database_at_0010: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = database_at_0010
    # 0008 keyed `a@straße.de` as `a@strasse.de`, one key with a different domain's address.
    sharp = uuid.uuid4()
    sql(
        url,
        "INSERT INTO users (id, email, email_key, name, created_at) "
        "VALUES ($1, 'a@straße.de', 'a@strasse.de', 'Old', $2)",
        sharp,
        T1,
    )
    sql(
        url,
        """
        INSERT INTO bounces (id, record_type, type, email, email_key, inactive, can_activate,
                             raw)
        VALUES (9, 'Bounce', 'HardBounce', 'a@straße.de', 'a@strasse.de', true, true, '{}'),
               (10, 'Bounce', 'HardBounce', '', '', true, true, '{}')
        """,
    )
    sql(
        url,
        """
        INSERT INTO suppressions (email, reason, origin, created_at, changed_at) VALUES
            -- written by 0008's rule from the bounce above
            ('a@strasse.de', 'HardBounce', 'Postmark', $1, $1),
            -- a webhook's `xn--` form, and the api's form of the same domain, older
            ('v@xn--bcher-kva.example', 'HardBounce', 'Postmark', $1, $2),
            ('v@bücher.example', 'ManualSuppression', 'Operator', $1, $1),
            -- untouched
            ('ada@example.com', 'HardBounce', 'Postmark', $1, $1)
        """,
        T1,
        T2,
    )
    sql(
        url,
        "INSERT INTO suppression_lifts (email, changed_at) VALUES ('w@xn--bcher-kva.example', $1)",
        T3,
    )

    assert migrate(url, monkeypatch) == 0

    out = capsys.readouterr().out
    [user_key] = [r[0] for r in sql(url, "SELECT email_key FROM users")]
    assert user_key == "a@straße.de" == address_key("a@STRAẞE.de")
    bounces = sql(url, "SELECT id, email_key FROM bounces ORDER BY id")
    assert [tuple(r) for r in bounces] == [(9, "a@straße.de"), (10, "")]
    suppressed = {
        r["email"]: (r["reason"], r["changed_at"])
        for r in sql(url, "SELECT email, reason, changed_at FROM suppressions")
    }
    assert suppressed == {
        # carried to the address it was written for, and kept where it was
        "a@straße.de": ("HardBounce", T1),
        "a@strasse.de": ("HardBounce", T1),
        # one domain, one entry: the newer fact
        "v@bücher.example": ("HardBounce", T2),
        "ada@example.com": ("HardBounce", T1),
    }
    lifts = {r["email"]: r["changed_at"] for r in sql(url, "SELECT * FROM suppression_lifts")}
    assert lifts == {"w@bücher.example": T3}
    assert "migration 0011: users: 1 keys recomputed" in out
    for address_part in ("straße", "strasse", "bücher", "xn--"):
        assert address_part not in out


@pytest.fixture
def utf8_database(postgres: PostgresServer) -> Iterator[str]:
    """A migrated database whose lower() folds beyond ASCII (libc's C.UTF-8)."""
    name = f"postroom_utf8_{uuid.uuid4().hex[:12]}"
    postgres.execute(
        f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' "
        "LOCALE_PROVIDER libc LOCALE 'C.UTF-8'"
    )
    try:
        url = postgres.url(name)
        upgrade(url)
        yield url
    finally:
        postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_undoing_0008_stops_with_ids_when_lower_would_merge_two_users(
    utf8_database: str,
) -> None:
    """Keys tell `İnci@` and `inci@` apart (full case folding keeps the dot); the old
    release's unique index on lower() would not, on a UTF-8 database. Going back refuses,
    names the users by id only, and changes nothing."""
    url = utf8_database
    first, second = "İnci@example.com", "inci@example.com"
    assert address_key(first) != address_key(second)
    assert sql(url, "SELECT lower($1) = lower($2) AS same", first, second)[0]["same"]
    ids = []
    for at, email in ((T1, first), (T2, second)):
        user_id = uuid.uuid4()
        sql(
            url,
            "INSERT INTO users (id, email, email_key, name, created_at) "
            "VALUES ($1, $2, $3, 'U', $4)",
            user_id,
            email,
            address_key(email),
            at,
        )
        ids.append(str(user_id))

    with pytest.raises(MigrationRefused) as refused:
        command.downgrade(alembic_config(url), "0007")

    message = str(refused.value)
    assert f"users {ids[0]}, {ids[1]} share one address under lower()" in message
    assert "inci" not in message.lower()
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert sql(url, "SELECT version_num FROM alembic_version")[0][0] == head
    assert len(sql(url, "SELECT email_key FROM users")) == 2
