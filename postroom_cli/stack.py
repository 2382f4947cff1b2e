"""Which stack an operator verb talks to.

`make dev` writes what its stack runs with to `.postroom/dev.settings` in the checkout. A verb
run anywhere in that checkout finds the file as git finds its own folder: from the current
folder up, to the first folder that has one. The checkout's top (the folder holding `.git`),
a mount boundary and the filesystem root end the search, so a checkout inside another's
folder never talks to the outer one's stack.

What wins: the environment, then `.env` in the current folder, then that file, then the
defaults."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from sqlalchemy.engine import make_url

from postroom.settings import CommonSettings, KafkaSettings

DEV_SETTINGS = Path(".postroom", "dev.settings")
DOTENV = Path(".env")


class StackSettingsError(Exception):
    """The stack's settings file is there but cannot be used as it is; the message, one
    line, says which file and why. A verb must not fall back to the defaults then: they may
    name another checkout's stack."""


def find_dev_settings(start: Path | None = None) -> Path | None:
    """The nearest `.postroom/dev.settings` from `start` (default: the current folder) up,
    or None. A link in its place counts, even a broken one (`check_dev_settings` says so)."""
    try:
        here = (start or Path.cwd()).absolute()
    except OSError:
        raise StackSettingsError("the current folder no longer exists") from None
    try:
        device = here.stat().st_dev
        for folder in (here, *here.parents):
            if folder.stat().st_dev != device:
                return None
            candidate = folder / DEV_SETTINGS
            if candidate.exists() or candidate.is_symlink():
                return candidate
            if (folder / ".git").exists():
                return None
    except OSError:  # a folder we may not look into
        return None
    return None


def check_dev_settings(path: Path) -> None:
    """Refuse a settings file that cannot be read, is not UTF-8 text, or has a line that is
    not `NAME=value` (which would be skipped, silently, by what reads it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise StackSettingsError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise StackSettingsError(f"{path} cannot be read ({exc.strerror or exc})") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise StackSettingsError(
                f"{path}, line {binding.original.line}: not NAME=value (an unclosed quote?)"
            )


def settings_files() -> tuple[Path, ...]:
    """The files an operator verb reads its settings from, the one that wins last; the
    stack's own file checked first (StackSettingsError)."""
    found = find_dev_settings()
    if found is not None:
        check_dev_settings(found)
    return (*([found] if found else []), DOTENV)


def _origin(name: str, files: Sequence[Path]) -> str:
    if name in {key.upper() for key in os.environ}:
        return f"{name} from the environment"
    for path in reversed(files):
        if path.is_file() and name in {key.upper() for key in dotenv_values(path)}:
            return f"{name} from {'the settings file' if path != DOTENV else path.absolute()}"
    return f"{name} by default"


def describe(
    settings: CommonSettings, files: Sequence[Path], *, database: bool, broker: bool
) -> str:
    """The settings file a verb found, and where its database and broker are (and which
    file, if any, said so); never a password."""
    found = [path for path in files if path.name == DEV_SETTINGS.name]
    parts = [
        f"settings file {found[0].absolute()}"
        if found
        else f"no {DEV_SETTINGS} in {Path.cwd()} or above"
    ]
    if database:
        url = make_url(settings.sqlalchemy_url)
        where = f"{url.host or 'local socket'}:{url.port or 5432}/{url.database}"
        parts.append(f"database {where} ({_origin('DATABASE_URL', files)})")
    if broker and isinstance(settings, KafkaSettings):
        origin = _origin("KAFKA_BOOTSTRAP_SERVERS", files)
        parts.append(f"broker {settings.kafka_bootstrap_servers} ({origin})")
    return "; ".join(parts)
