"""Which stack the operator verbs talk to, and what they say when it is down: the real
`postroom` command in a process of its own, as an operator runs it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from postroom_cli.embedded import free_port
from postroom_cli.main import KAFKA_TIMEOUT
from tests.support.dev import clean_env
from tests.support.postgres import PostgresServer
from tests.support.settings import API_TOKEN, EMAIL_SECRET, POSTMARK_TOKEN, WEBHOOK_PASSWORD

KAFKA_VERBS = [("dlq", "list"), ("dlq", "replay"), ("events", "tail")]


def postroom(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postroom_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def stack_settings(database_url: str, kafka_bootstrap: str) -> dict[str, str]:
    """What a notifier's settings need, as `make dev` writes them."""
    return {
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "API_TOKENS": API_TOKEN,
        "EMAIL_TOKEN_SECRET": EMAIL_SECRET,
        "POSTMARK_SERVER_TOKEN": POSTMARK_TOKEN,
        "POSTMARK_API_URL": f"http://127.0.0.1:{free_port()}/",
        "WEBHOOK_USERNAME": "postmark",
        "WEBHOOK_PASSWORD": WEBHOOK_PASSWORD,
        "MAIL_FROM": "Postroom <hello@postroom.test>",
        "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
    }


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """An address that takes connections and never says a word (a hung broker)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def assert_one_line_about_the_broker(
    done: subprocess.CompletedProcess[str], group: str, broker: str
) -> None:
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"postroom {group}: the broker at {broker} does not answer (")


@pytest.mark.parametrize("verb", KAFKA_VERBS, ids=" ".join)
def test_a_broker_nobody_listens_on_is_one_line_and_exit_code_3(
    verb: tuple[str, str], tmp_path: Path
) -> None:
    broker = f"127.0.0.1:{free_port()}"
    dead_database = f"postgresql://postgres@127.0.0.1:{free_port()}/postroom"
    env = clean_env() | stack_settings(dead_database, broker)
    started = time.monotonic()

    done = postroom(*verb, cwd=tmp_path, env=env)

    assert_one_line_about_the_broker(done, verb[0], broker)
    assert "Connect call failed" in done.stderr  # the reason, from the client's own log
    assert time.monotonic() - started < KAFKA_TIMEOUT + 10


@pytest.mark.parametrize("verb", KAFKA_VERBS, ids=" ".join)
def test_a_broker_that_never_answers_is_given_up_after_the_stated_bound(
    verb: tuple[str, str], tmp_path: Path, silent_broker: str
) -> None:
    dead_database = f"postgresql://postgres@127.0.0.1:{free_port()}/postroom"
    env = clean_env() | stack_settings(dead_database, silent_broker)
    started = time.monotonic()

    done = postroom(*verb, cwd=tmp_path, env=env)

    took = time.monotonic() - started
    assert_one_line_about_the_broker(done, verb[0], silent_broker)
    assert done.stderr.strip().endswith(f"(waited {KAFKA_TIMEOUT:g} s)")
    # The bound, plus the interpreter starting; aiokafka's own default is 40 s.
    assert KAFKA_TIMEOUT <= took < KAFKA_TIMEOUT + 10


def with_password(database_url: str) -> tuple[str, str]:
    """The test database's URL with a password in it (the test server trusts local
    connections, so any password works), and that password."""
    url = make_url(database_url)
    password = url.password or f"pw-{uuid.uuid4().hex}"
    return url.set(password=password).render_as_string(hide_password=False), password


def write_dev_settings(checkout: Path, settings: dict[str, str]) -> Path:
    path = checkout / ".postroom" / "dev.settings"
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    return path


async def test_a_verb_run_in_a_subfolder_talks_to_the_checkouts_stack(
    tmp_path: Path, database_url: str, db: asyncpg.Connection
) -> None:
    url, password = with_password(database_url)
    settings_file = write_dev_settings(tmp_path, stack_settings(url, f"127.0.0.1:{free_port()}"))
    aggregate = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, shard) "
        "VALUES ($1, 'user', $2, 'user.updated', '{}', 0)",
        uuid.uuid4(),
        aggregate,
    )
    deep = tmp_path / "notifier" / "templates"
    deep.mkdir(parents=True)

    done = postroom("outbox", "recent", "--json", "-v", cwd=deep, env=clean_env())

    assert done.returncode == 0, done.stderr
    assert aggregate in done.stdout
    [said] = done.stderr.splitlines()
    parsed = make_url(database_url)
    assert said == (
        f"postroom outbox: settings file {settings_file}; "
        f"database {parsed.host}:{parsed.port}/{parsed.database} "
        "(DATABASE_URL from the settings file)"
    )
    assert password not in done.stderr + done.stdout


def test_the_environment_wins_over_the_checkouts_settings(tmp_path: Path) -> None:
    url, password = with_password(f"postgresql://postgres@127.0.0.1:{free_port()}/stack")
    broker = f"127.0.0.1:{free_port()}"
    settings_file = write_dev_settings(tmp_path, stack_settings(url, broker))
    elsewhere = f"127.0.0.1:{free_port()}"
    deep = tmp_path / "docs"
    deep.mkdir()

    done = postroom(
        "dlq", "replay", "--verbose",
        cwd=deep,
        env=clean_env() | {"KAFKA_BOOTSTRAP_SERVERS": elsewhere},
    )  # fmt: skip

    said, failed = done.stderr.splitlines()
    assert said.startswith(f"postroom dlq: settings file {settings_file}; database 127.0.0.1:")
    assert "/stack (DATABASE_URL from the settings file)" in said
    assert said.endswith(f"; broker {elsewhere} (KAFKA_BOOTSTRAP_SERVERS from the environment)")
    assert failed.startswith(f"postroom dlq: the broker at {elsewhere} does not answer")
    assert done.returncode == 3
    assert password not in done.stderr


def test_a_checkout_inside_another_does_not_talk_to_the_outer_ones_stack(
    tmp_path: Path,
) -> None:
    write_dev_settings(tmp_path, stack_settings("postgresql://postgres@127.0.0.1:1/outer", "x:1"))
    inner = tmp_path / "worktrees" / "feature"
    (inner / "api").mkdir(parents=True)
    (inner / ".git").write_text("gitdir: elsewhere\n")
    env = clean_env() | {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"}

    done = postroom("outbox", "status", "-v", cwd=inner / "api", env=env)

    said = done.stderr.splitlines()[0]
    assert said.startswith(
        f"postroom outbox: no .postroom/dev.settings in {inner / 'api'} or above"
    )
    assert done.returncode == 3


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'DATABASE_URL=postgresql://a@127.0.0.1:1/db\nAPI_TOKENS="unclosed\n', "line 2: not"),
        (b"DATABASE_URL=postgresql://a@127.0.0.1:1/caf\xe9\n", "is not UTF-8 text"),
        (None, "cannot be read"),  # a link to nowhere
    ],
    ids=["unclosed quote", "latin-1", "broken link"],
)
def test_a_settings_file_that_cannot_be_used_is_one_line_and_exit_2_not_the_defaults(
    tmp_path: Path, content: bytes | None, why: str
) -> None:
    """Skipping what cannot be read would leave the defaults, which may name another
    checkout's stack."""
    path = tmp_path / ".postroom" / "dev.settings"
    path.parent.mkdir()
    if content is None:
        path.symlink_to(tmp_path / "gone")
    else:
        path.write_bytes(content)

    done = postroom("outbox", "status", "-v", cwd=tmp_path, env=clean_env())

    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"postroom outbox: configuration error: {path}")
    assert why in line


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://admin:Top@Secret9@127.0.0.1:1/db",
        "postgresql://admin:Top?Secret9@127.0.0.1:1/db",
        "postgresql://admin:Top/Secret9@127.0.0.1:1/db",
        "host=db password=Secret9",
    ],
)
def test_a_password_spelt_so_the_url_reads_wrong_never_reaches_the_terminal(
    tmp_path: Path, url: str
) -> None:
    write_dev_settings(tmp_path, {"DATABASE_URL": url})
    for verb in (("outbox", "status", "-v"), ("migrate", "-v")):
        done = postroom(*verb, cwd=tmp_path, env=clean_env())
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith(f"postroom {verb[0]}: configuration error: DATABASE_URL")
        assert "Secret9" not in done.stderr + done.stdout


async def test_migrate_in_a_checkout_migrates_its_stack_and_says_which(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    name = f"operator_migrate_{uuid.uuid4().hex[:8]}"
    postgres.execute(f'CREATE DATABASE "{name}"')
    try:
        url = postgres.url(name)
        write_dev_settings(tmp_path, {"DATABASE_URL": url})
        (tmp_path / "api").mkdir()

        done = postroom("migrate", "-v", cwd=tmp_path / "api", env=clean_env())

        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "database migrated to head"
        assert f"/{name} (DATABASE_URL from the settings file)" in done.stderr
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()
    finally:
        postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrate_with_the_database_down_is_one_line_and_exit_3(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env() | {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/postroom"}

    done = postroom("migrate", cwd=tmp_path, env=env)

    assert done.returncode == 3
    [line] = done.stderr.splitlines()
    assert line.startswith(f"postroom migrate: the database at 127.0.0.1:{port} does not answer")
