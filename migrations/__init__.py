"""The database's schema, as Alembic revisions, and the code that applies them (the
`postroom migrate` verb, `make dev`, the tests).

The package ships in the wheel beside `api` and `notifier`, so an installed Postroom migrates
from any folder: nothing here reads `alembic.ini`, which serves whoever writes a revision in a
checkout (`alembic revision -m "..."` from its root).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).resolve().parent


class MigrationRefused(Exception):
    """A migration found data it must not change by itself; its message says what and what
    to do (one line each). Nothing was changed: the migration's transaction is rolled back."""


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("path_separator", "os")
    config.attributes["url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at `database_url` to `revision`. Not callable inside a running loop."""
    command.upgrade(alembic_config(database_url), revision)
