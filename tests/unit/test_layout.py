"""The layout holds: shared code below, processes side by side, the command on top.

Every import is read from the source, those inside functions included, so a late import cannot
hide an arrow pointing the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = "postroom"
# The schema's revisions: they read the shared tables, and the command applies them.
MIGRATIONS = "migrations"
PROCESSES = ("api", "outbox_relay", "notifier", "sandbox")
COMMAND = "postroom_cli"


def imported_packages(path: Path) -> set[str]:
    """The top-level packages `path` imports, wherever the import sits."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def wrong_arrows(package: str, forbidden: set[str]) -> list[str]:
    return sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / package).rglob("*.py")
        for name in imported_packages(path) & forbidden
    )


def test_the_shared_package_imports_no_process_and_not_the_command() -> None:
    assert wrong_arrows(SHARED, {*PROCESSES, COMMAND, MIGRATIONS}) == []


def test_the_migrations_import_only_shared_code() -> None:
    assert wrong_arrows(MIGRATIONS, {*PROCESSES, COMMAND}) == []


@pytest.mark.parametrize("process", PROCESSES)
def test_a_process_imports_no_other_process_and_not_the_command(process: str) -> None:
    others = {p for p in PROCESSES if p != process}
    assert wrong_arrows(process, {*others, COMMAND, MIGRATIONS}) == []


def test_the_reader_sees_a_late_import(tmp_path: Path) -> None:
    """The check itself: an import inside a function counts like one at the top."""
    module = tmp_path / "late.py"
    module.write_text("def run():\n    from notifier.app import main\n    import api.app\n")
    assert imported_packages(module) == {"notifier", "api"}
