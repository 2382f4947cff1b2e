"""`postroom dev`: the whole stack on a laptop, no Docker, no accounts.

Starts an embedded PostgreSQL and an Apache Kafka broker (KRaft) whose data persist under
`.postroom/` (Tansu, in memory, where there is no Java 17+ and Maven, or with
POSTROOM_DEV_BROKER=tansu), applies migrations and runs each process (the Postmark
sandbox with its dev inbox, api, relay, notifier) as a child with one shared environment.
What dies is started again: a process after a growing pause, PostgreSQL or the broker at
once, but only once in a row (see Server).
Every setting given in the environment is honoured; only missing ones get development
defaults, which are printed.
Generated secrets are kept in `.postroom/dev.env` so the token stays the same between runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from migrations import upgrade
from postroom_cli.embedded import (
    Broker,
    EmbeddedPostgres,
    InfrastructureError,
    KafkaBroker,
    TansuBroker,
    broker_kind,
    process_alive,
)

STATE_DIR = Path(".postroom")
DEV_PG_PORT = 5433
DEV_KAFKA_PORT = 9092
API_PORT = 8000
RELAY_METRICS_PORT = 8002
NOTIFIER_PORT = 8001
SANDBOX_PORT = 8025


def _load_dev_secrets(path: Path) -> dict[str, str]:
    """Generated once per checkout, then reused."""
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
    wanted: dict[str, Callable[[], str]] = {
        "API_TOKENS": lambda: "dev-only-" + secrets.token_urlsafe(18),
        "EMAIL_TOKEN_SECRET": lambda: "dev-only-" + secrets.token_urlsafe(32),
        "POSTMARK_SERVER_TOKEN": lambda: "dev-only-" + secrets.token_urlsafe(12),
        "WEBHOOK_USERNAME": lambda: "postmark",
        "WEBHOOK_PASSWORD": lambda: "dev-only-" + secrets.token_urlsafe(18),
    }
    changed = False
    for key, make in wanted.items():
        if key not in values:
            values[key] = make()
            changed = True
    if changed:
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        path.chmod(0o600)
    return values


_COLOURS = {"sandbox": "35", "api": "36", "relay": "33", "notifier": "32"}
# Each child is started as `python -m <module>`, as the image and compose start it.
MODULES = {"sandbox": "sandbox", "api": "api", "relay": "outbox_relay", "notifier": "notifier"}


class Child:
    """One process of the stack: its output prefixed with its name, restarted with growing
    pauses when it exits on its own."""

    def __init__(self, name: str, env: dict[str, str], *, colour: bool) -> None:
        self.name = name
        self.env = env
        self.prefix = (
            f"\033[{_COLOURS.get(name, '37')}m{name:<8}\033[0m| " if colour else f"{name:<8}| "
        )
        self.process: subprocess.Popen[str] | None = None
        self.restarts = 0
        self.restart_at: float | None = None

    def start(self) -> None:
        with _signals.held():
            self.process = subprocess.Popen(
                [sys.executable, "-m", MODULES[self.name]],
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                # A group of its own: Ctrl-C and a closed terminal reach the supervisor alone,
                # which stops each child with one SIGTERM (a second signal would cut the
                # child's graceful stop short).
                process_group=0,
            )
            threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()
        _say(f"dev     | started {self.name} (pid {self.process.pid})")

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(self.prefix + line)
            sys.stdout.flush()
        process.stdout.close()

    def check(self, now: float) -> None:
        """Restart the process if it died, after 1, 2, 4 … 30 s."""
        if self.process is None:
            return
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restart_at = None
                self.restarts += 1
                self.start()
            return
        with _signals.held():  # see Server.check
            code = self.process.poll()
        if code is not None:
            pause = min(30.0, 2.0**self.restarts)
            print(
                f"dev     | {self.name} exited with code {code}; restarting in {pause:.0f} s",
                flush=True,
            )
            self.restart_at = now + pause

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def wait(self) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _wait_ready(url: str, proc: subprocess.Popen[str], *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _signals.held():  # see Server.check
            ended = proc.poll() is not None
        if ended:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - our own loopback URL
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


class Stopping(BaseException):
    """Ctrl-C, SIGTERM or SIGHUP (the terminal closed): stop the stack. Not an Exception, as
    KeyboardInterrupt is not, so that no `except Exception` on its way swallows it."""


class StackFailed(Exception):
    """PostgreSQL or the broker died and could not be brought back; the message says which."""


def _say(line: str) -> None:
    # A signal can arrive in the middle of a print, whose buffer then refuses the handler's
    # own print: that line is lost, not the stop.
    with contextlib.suppress(RuntimeError):
        print(line, flush=True)


class _StopSignals:
    """The first stop signal stops the stack: Stopping is raised wherever the supervisor is,
    except while it starts a process (`held`), where it is raised once the start is done:
    interrupted in the middle, a start leaves a process running that nobody stops."""

    names = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopping = False
        self._holding = 0

    def install(self) -> None:
        for each in self.names:
            signal.signal(each, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        # Once: the stack is then stopped in order, and more signals must not cut that short.
        # (A handler, not SIG_IGN: an ignored signal stays ignored in the processes we start.)
        if self.stopping:
            return
        self.stopping = True
        self.received = signum
        _say(f"dev     | {signal.Signals(signum).name}: stopping")
        if not self._holding:
            raise Stopping

    def ignore(self) -> None:
        """The stack is being stopped for another reason: signals no longer interrupt that."""
        self.stopping = True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._holding += 1
        try:
            yield
        except InfrastructureError:
            # pg_ctl, initdb and mvn share our terminal and fail on the same Ctrl-C: the stop
            # is what happened, not their failure.
            if self.received is None:
                raise
        finally:
            self._holding -= 1
        if self.received is not None and not self._holding:
            raise Stopping


_signals = _StopSignals()


def run_dev() -> int:
    _signals.install()
    try:
        return _run_dev()
    except Stopping:
        return 0


def _listener_of(port: int) -> str | None:
    """Who listens on `port`, as "name (pid N)", when this user may see it (Linux /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    name = (proc / "comm").read_text().strip()
                    return f"{name} (pid {proc.name})"
    return None


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _taken_port(wanted: list[tuple[int, str, str]]) -> str | None:
    """The first of `wanted` (port, what, setting) that something else listens on, said in
    one line: which port, who holds it if we can tell, and the setting that moves it."""
    for port, what, setting in wanted:
        if _port_taken(port):
            holder = _listener_of(port)
            by = f" by {holder}" if holder else ""
            return f"port {port} ({what}) is in use{by}; set {setting} to use another"
    return None


class StackRunning(Exception):
    """Another `postroom dev` runs from this checkout; the message says which."""


def _hold_checkout(state_dir: Path) -> IO[str]:
    """This checkout's stack lock, held until the process ends (the kernel lets go of it
    then, even after a SIGKILL: no stale lock). A second stack on one checkout would take
    over the first one's PostgreSQL, share its outbox and overwrite its settings."""
    lock = (state_dir / "dev.lock").open("a+", encoding="utf-8")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        pid = lock.read().strip() or "?"
        lock.close()
        raise StackRunning(
            f"a stack is already running from this checkout (pid {pid}); stop it first "
            f"(Ctrl-C where it runs, or kill {pid})"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _run_dev() -> int:
    STATE_DIR.mkdir(exist_ok=True)
    try:
        lock = _hold_checkout(STATE_DIR)
    except StackRunning as exc:
        print(f"postroom dev: {exc}", file=sys.stderr)
        return 1
    try:
        return _run_stack()
    finally:
        lock.close()


def _port(env: dict[str, str], name: str, default: int) -> int:
    """A port setting, or ValueError naming it (before anything starts)."""
    value = env.get(name, str(default)).strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 5 and 0 < int(value) < 65536):
        raise ValueError(f"{name} must be a port number (1-65535), got {value[:20]!r}")
    return int(value)


def _run_stack() -> int:
    env = dict(os.environ)
    defaults: dict[str, str] = {"APP_ENV": "development"}
    postgres: EmbeddedPostgres | None = None
    broker: Broker | None = None
    children: dict[str, Child] = {}
    try:
        pg_port = _port(env, "POSTROOM_DEV_PG_PORT", DEV_PG_PORT)
        wanted = [
            (_port(env, "API_PORT", API_PORT), "api", "API_PORT"),
            (_port(env, "RELAY_METRICS_PORT", RELAY_METRICS_PORT), "relay", "RELAY_METRICS_PORT"),
            (_port(env, "NOTIFIER_PORT", NOTIFIER_PORT), "notifier", "NOTIFIER_PORT"),
            (_port(env, "SANDBOX_PORT", SANDBOX_PORT), "sandbox", "SANDBOX_PORT"),
        ]
        kafka_port = _port(env, "POSTROOM_DEV_KAFKA_PORT", DEV_KAFKA_PORT)
    except ValueError as exc:
        print(f"postroom dev: configuration error: {exc}", file=sys.stderr)
        return 2
    if "KAFKA_BOOTSTRAP_SERVERS" not in env:
        wanted.append((kafka_port, "embedded broker", "POSTROOM_DEV_KAFKA_PORT"))
    if "DATABASE_URL" not in env:
        postgres = EmbeddedPostgres(STATE_DIR / "pg", port=pg_port)
        # This checkout's own server, left running: start() restarts it.
        if not postgres.is_running():
            wanted.insert(0, (pg_port, "embedded PostgreSQL", "POSTROOM_DEV_PG_PORT"))
    if (taken := _taken_port(wanted)) is not None:
        print(f"postroom dev: {taken}", file=sys.stderr)
        return 1
    servers: list[Server] = []
    try:
        if postgres is not None:
            port = pg_port
            print(f"starting embedded PostgreSQL on 127.0.0.1:{port} (data in {STATE_DIR / 'pg'})")
            with _signals.held():
                postgres.start()
                postgres.create_database("postroom")
            defaults["DATABASE_URL"] = postgres.url("postroom")
            servers.append(_watched_postgres(postgres))
        if "KAFKA_BOOTSTRAP_SERVERS" not in env:
            port = kafka_port
            if broker_kind("POSTROOM_DEV_BROKER") == "kafka":
                broker = KafkaBroker(
                    port=port, data_dir=STATE_DIR / "kafka", log_path=STATE_DIR / "broker.log"
                )
                where = f"data in {STATE_DIR / 'kafka'}"
            else:
                broker = TansuBroker(port=port, log_path=STATE_DIR / "broker.log")
                where = "in memory"
                # Tansu grants no producer ids: the idempotent producer must be off.
                defaults["KAFKA_ENABLE_IDEMPOTENCE"] = "false"
            print(f"starting {broker.description} on 127.0.0.1:{port} ({where})")
            _start_broker(broker)
            defaults["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
            servers.append(_watched_broker(broker))
        return _run_children(env, defaults, children, broker, servers)
    except (InfrastructureError, StackFailed) as exc:
        print(f"postroom dev: {exc}", file=sys.stderr)
        return 1
    finally:
        _signals.ignore()
        for child in children.values():
            child.stop()
        for child in children.values():
            child.wait()
        _stop_infrastructure(postgres, broker)


def _start_broker(broker: Broker) -> None:
    broker.prepare()  # the first run's download: a Ctrl-C may cut it short
    with _signals.held():
        broker.start(wait=False)
    broker.wait_started()


# A server that dies again this soon after its restart is not restarted a second time.
RESTART_WINDOW = 60.0


class Server:
    """PostgreSQL or the broker, watched by the supervisor: restarted when it dies, said in one
    line; dying again within RESTART_WINDOW of that restart, or not starting again, it stops
    the stack (StackFailed), since the processes cannot work without it."""

    def __init__(
        self,
        description: str,
        *,
        pid: Callable[[], int | None],
        restart: Callable[[], None],
        log: Path | None,
    ) -> None:
        self.description = description
        self._pid = pid
        self._restart = restart
        self.log = f" (log: {log})" if log else ""
        self.restarted_at: float | None = None

    def check(self, now: float) -> None:
        # Held: interrupted inside poll(), a Popen keeps a lock that its wait() then waits
        # for forever, and the stack would never stop.
        with _signals.held():
            pid = self._pid()
        if pid is not None and process_alive(pid):
            return
        if self.restarted_at is not None and now - self.restarted_at < RESTART_WINDOW:
            raise StackFailed(
                f"{self.description} died again within {RESTART_WINDOW:.0f} s of its restart"
                f"{self.log}; stopping the stack"
            )
        _say(f"dev     | {self.description} died; restarting it{self.log}")
        try:
            self._restart()
        except InfrastructureError:
            raise StackFailed(
                f"{self.description} died and did not start again{self.log}; stopping the stack"
            ) from None
        self.restarted_at = time.monotonic()
        _say(f"dev     | {self.description} restarted")


def _watched_postgres(postgres: EmbeddedPostgres) -> Server:
    def restart() -> None:
        # Its data folder is safe to start on again: PostgreSQL recovers from its WAL.
        with _signals.held():
            postgres.start()

    return Server(
        "embedded PostgreSQL", pid=lambda: postgres.pid, restart=restart, log=postgres.log_path
    )


def _watched_broker(broker: Broker) -> Server:
    # Apache Kafka starts again on its log folder, records kept; Tansu starts empty.
    return Server(
        broker.description,
        pid=lambda: broker.pid,
        restart=lambda: _start_broker(broker),
        log=broker.log_path,
    )


def _run_children(
    env: dict[str, str],
    defaults: dict[str, str],
    children: dict[str, Child],
    broker: Broker | None,
    servers: list[Server],
) -> int:
    """Start the four processes on the infrastructure in `env`, then supervise them."""
    defaults.update(_load_dev_secrets(STATE_DIR / "dev.env"))
    api_port = int(env.get("API_PORT", API_PORT))
    relay_port = int(env.get("RELAY_METRICS_PORT", RELAY_METRICS_PORT))
    notifier_port = int(env.get("NOTIFIER_PORT", NOTIFIER_PORT))
    sandbox_port = int(env.get("SANDBOX_PORT", SANDBOX_PORT))
    defaults["API_PORT"] = str(api_port)
    defaults["RELAY_METRICS_PORT"] = str(relay_port)
    defaults["NOTIFIER_PORT"] = str(notifier_port)
    defaults["SANDBOX_PORT"] = str(sandbox_port)
    defaults["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{api_port}"
    defaults["POSTMARK_API_URL"] = f"http://127.0.0.1:{sandbox_port}/"
    defaults["SANDBOX_WEBHOOK_URL"] = f"http://127.0.0.1:{notifier_port}/webhooks/postmark"
    defaults["MAIL_FROM"] = "Postroom <hello@postroom.test>"

    filled = {key: value for key, value in defaults.items() if key not in env}
    env.update(filled)
    # What this stack runs with, read by the operator verbs (`postroom outbox|dlq|...`).
    settings_file = STATE_DIR / "dev.settings"
    settings_file.write_text(
        "".join(f"{key}={env[key]}\n" for key in sorted({*defaults, *filled}) if key in env)
    )
    settings_file.chmod(0o600)
    print("development defaults (set any of these in the environment to override):")
    for key, value in filled.items():
        secret = key in {"EMAIL_TOKEN_SECRET", "WEBHOOK_PASSWORD", "POSTMARK_SERVER_TOKEN"}
        shown = f"(generated, in {STATE_DIR / 'dev.env'})" if secret else value
        print(f"  {key}={shown}")

    upgrade(env["DATABASE_URL"])
    print("migrations applied")
    for name in ("sandbox", "api", "relay", "notifier"):
        children[name] = Child(name, env, colour=sys.stdout.isatty())
        children[name].start()
    base = f"http://127.0.0.1:{api_port}"
    relay_base = f"http://127.0.0.1:{relay_port}"
    notifier_base = f"http://127.0.0.1:{notifier_port}"
    inbox = f"http://127.0.0.1:{sandbox_port}"
    for name, url in (
        ("sandbox", f"{inbox}/healthz"),
        ("api", f"{base}/readyz"),
        ("relay", f"{relay_base}/readyz"),
        ("notifier", f"{notifier_base}/readyz"),
    ):
        process = children[name].process
        assert process is not None
        if not _wait_ready(url, process, timeout=60):
            print(f"postroom dev: the {name} did not become ready", file=sys.stderr)
            return 1
    token = env["API_TOKENS"].split(",")[0].strip()
    cli = _command_that_works()
    topic = f"{env.get('KAFKA_TOPIC_PREFIX', 'postroom')}.user"
    print(
        f"\nPostroom is running.\n"
        f"  api       {base}  (docs at {base}/docs, metrics at {base}/metrics)\n"
        f"  relay     {relay_base}/metrics\n"
        f"  notifier  {notifier_base}  (docs at {notifier_base}/docs, "
        f"metrics at {notifier_base}/metrics)\n"
        f"  inbox     {inbox}  (every email sent, as the sandbox captured it)\n"
        f"  emails    {inbox}/previews  (every email of the catalogue, per locale: "
        f"{env.get('NOTIFIER_TEMPLATES_DIR') or 'the built-in templates'})\n"
        f"  kafka     {env['KAFKA_BOOTSTRAP_SERVERS']}  "
        f"({broker.description + ', ' if broker else ''}topic {topic})\n"
        f"  token     {token}\n\n"
        f"  curl -sX POST {base}/v1/users -H 'Authorization: Bearer {token}' \\\n"
        f"       -H 'Content-Type: application/json' "
        f'-d \'{{"email":"ada@example.com","name":"Ada"}}\'\n'
        f"  {cli} outbox recent           # the event it committed\n"
        f"  {cli} events tail --from-beginning   # the same event on Kafka\n"
        f"  open {inbox} for the welcome email; its link verifies the address\n\n"
        f"{_BROKER_NOTE.get(broker.kind, '') if broker else ''}"
        f"Ctrl-C stops everything.",
        flush=True,
    )
    return _supervise(list(children.values()), servers)


_BROKER_NOTE = {
    "tansu": "The embedded broker (Tansu) keeps topics in memory: empty after a restart.\n",
}


def _stop_infrastructure(postgres: EmbeddedPostgres | None, broker: Broker | None) -> None:
    if broker is not None:
        broker.stop()
        print(f"{broker.description} stopped")
    if postgres is not None:
        postgres.stop()
        print("embedded PostgreSQL stopped")


def _command_that_works() -> str:
    """How to call `postroom` from this shell: the virtualenv's script (`.venv/bin/postroom`
    from the checkout) unless `postroom` on the PATH is that very script."""
    script = Path(sys.executable).with_name("postroom")
    if not script.exists():
        return f"{Path(sys.executable).name} -m postroom_cli"
    found = shutil.which("postroom")
    if found and Path(found).resolve() == script.resolve():
        return "postroom"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def _supervise(children: list[Child], servers: list[Server]) -> int:
    """Restart what dies, until a stop signal raises Stopping or a server that cannot be
    brought back raises StackFailed."""
    while True:
        for server in servers:
            server.check(time.monotonic())
        now = time.monotonic()
        for child in children:
            child.check(now)
        time.sleep(0.2)
