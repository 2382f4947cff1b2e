"""Registering a user commits the user row and its event together, or neither."""

import asyncio
import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
import structlog

from postroom.logs import configure_logging
from postroom.outbox import NOTIFY_CHANNEL, shard_of


async def counts(db: asyncpg.Connection) -> tuple[int, int]:
    return (
        await db.fetchval("SELECT count(*) FROM users"),
        await db.fetchval("SELECT count(*) FROM outbox"),
    )


async def test_registering_writes_the_user_and_exactly_one_event(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    answer = await client.post("/v1/users", json={"email": "Ada@Example.com", "name": " Ada "})

    assert answer.status_code == 201
    body = answer.json()
    assert answer.headers["location"] == f"/v1/users/{body['id']}"
    assert body["email"] == "Ada@example.com"  # the domain is case-folded, the mailbox kept
    assert body["name"] == "Ada"
    assert body["email_verified"] is False
    assert body["version"] == 1

    rows = await db.fetch("SELECT * FROM outbox")
    assert len(rows) == 1
    row = rows[0]
    assert row["event_type"] == "user.registered"
    assert row["aggregate_type"] == "user"
    assert row["aggregate_id"] == body["id"]
    assert row["shard"] == shard_of(body["id"], 8)
    assert row["published_at"] is None
    assert row["attempts"] == 0
    payload = json.loads(row["payload"])
    assert payload == {
        "user_id": body["id"],
        "email": "Ada@example.com",
        "name": "Ada",
        "version": 1,
        "registered_at": payload["registered_at"],
        "locale": None,
    }
    assert json.loads(row["headers"]) == {"ce_source": "/postroom/api"}
    user = await db.fetchrow("SELECT * FROM users WHERE id = $1", uuid.UUID(body["id"]))
    assert user is not None
    assert user["email"] == "Ada@example.com"


async def test_the_same_address_in_another_case_is_taken(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    first = await client.post("/v1/users", json={"email": "grace@example.com", "name": "Grace"})
    assert first.status_code == 201

    again = await client.post("/v1/users", json={"email": "GRACE@example.COM", "name": "Imposter"})

    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    problem = again.json()
    assert problem["type"] == "urn:postroom:problem:email-taken"
    assert problem["status"] == 409
    assert await counts(db) == (1, 1)


async def test_an_outbox_insert_that_fails_leaves_no_user(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await db.execute(
        """
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'outbox refuses this row'; END $$;
        CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox
        FOR EACH ROW EXECUTE FUNCTION refuse();
        """
    )

    answer = await client.post("/v1/users", json={"email": "lost@example.com", "name": "Lost"})

    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert "outbox refuses" not in answer.text  # no internals in the answer
    assert await counts(db) == (0, 0)


async def test_a_transaction_that_fails_after_the_outbox_insert_leaves_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # A deferred constraint trigger fires at COMMIT, after both inserts succeeded.
    await db.execute(
        """
        CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'commit refused'; END $$;
        CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT ON outbox
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();
        """
    )
    listener = await asyncpg.connect(dsn=_dsn_of(db))
    notified: list[str] = []
    await listener.add_listener(NOTIFY_CHANNEL, lambda *args: notified.append(args[-1]))
    try:
        answer = await client.post("/v1/users", json={"email": "late@example.com", "name": "Late"})
        await asyncio.sleep(0.2)
    finally:
        await listener.close()

    assert answer.status_code == 500
    assert await counts(db) == (0, 0)
    assert notified == []  # a rolled-back transaction wakes no relay


async def test_each_transaction_wakes_the_relays_once(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    listener = await asyncpg.connect(dsn=_dsn_of(db))
    notified: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(NOTIFY_CHANNEL, lambda *args: notified.put_nowait(args[-1]))
    try:
        created = await client.post("/v1/users", json={"email": "n@example.com", "name": "N"})
        await asyncio.wait_for(notified.get(), timeout=5)
        # One PATCH that changes the address adds two events in one transaction.
        changed = await client.patch(
            f"/v1/users/{created.json()['id']}", json={"email": "m@example.com", "name": "M"}
        )
        assert changed.status_code == 200
        await asyncio.wait_for(notified.get(), timeout=5)
        await asyncio.sleep(0.2)
        assert notified.empty()
    finally:
        await listener.close()
    assert await db.fetchval("SELECT count(*) FROM outbox") == 3


def _dsn_of(db: asyncpg.Connection) -> str:
    params = db._params
    addr = db._addr
    return f"postgresql://{params.user}@{addr[0]}:{addr[1]}/{params.database}"


@pytest.fixture(params=["json", "console"])
def production_logs(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[io.StringIO]:
    """Logging as the processes configure it (JSON, or readable in development), into a
    buffer the test reads; the test run's own logging is put back afterwards."""
    buffer = io.StringIO()
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("info", json=request.param == "json")
    # Loggers must not keep this buffer after the test: no caching on first use.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield buffer
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_an_unexpected_database_error_logs_no_personal_data(
    client: httpx.AsyncClient, db: asyncpg.Connection, production_logs: io.StringIO
) -> None:
    await db.execute(
        """
        CREATE FUNCTION refuse_user() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN
            -- The way PostgreSQL words its own errors: the values go in the DETAIL.
            RAISE EXCEPTION 'users refuses this row' USING DETAIL = 'Key ' || NEW.email;
        END $$;
        CREATE TRIGGER refuse_users BEFORE INSERT ON users
        FOR EACH ROW EXECUTE FUNCTION refuse_user();
        """
    )

    answer = await client.post(
        "/v1/users", json={"email": "private.person@example.com", "name": "Private Person"}
    )
    logged = production_logs.getvalue()

    assert answer.status_code == 500
    assert "users refuses this row" in logged  # the error is logged...
    assert "private.person@example.com" not in logged  # ...its data is not
    assert "Private Person" not in logged
