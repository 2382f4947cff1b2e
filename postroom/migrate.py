"""Apply Alembic migrations from code (the `postroom migrate` verb, `make dev`, the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

# Both ship inside the package: an installed Postroom (the image) migrates from anywhere.
HERE = Path(__file__).resolve().parent


class MigrationRefused(Exception):
    """A migration found data it must not change by itself; its message says what and what
    to do (one line each). Nothing was changed: the migration's transaction is rolled back."""


def alembic_config(database_url: str) -> Config:
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE / "migrations"))
    config.attributes["url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at `database_url` to `revision`. Not callable inside a running loop."""
    command.upgrade(alembic_config(database_url), revision)
