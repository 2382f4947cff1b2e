"""An open-loop load generator for `POST /v1/users`: requests go out on a fixed schedule,
whatever the answers do, and each one's latency starts at its scheduled time, so time spent
waiting for a free connection is counted, not hidden.

    python -m benchmarks.loadgen --url http://127.0.0.1:8000 --token T --rate 300 \\
        --seconds 20 --tag run1 --out results.json

It runs in a process of its own (the benchmark starts it) so its CPU is measured apart from
the processes under test, and it speaks HTTP/1.1 over asyncio protocols directly: about
0.05 ms of CPU per request where an httpx client spends about 1 ms, the difference between
measuring the system and measuring the client. Unique addresses are `<tag>-<n>@example.com`.

Connections are kept alive and reused; a new one opens when a request is due and none is
free (up to --max-connections, then requests queue). One idle for more than a second is
closed by this side first: the api closes idle connections after 5 s, and a request written
at that instant would be lost with the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

IDLE_EXPIRY = 1.0  # seconds; well inside uvicorn's keep-alive (5 s)


@dataclass(slots=True)
class Request:
    n: int
    due: float  # perf_counter time it was scheduled for
    sent: float = 0.0  # perf_counter time its bytes were written
    answered: float = 0.0  # perf_counter time its whole answer was read
    status: int = 0
    error: str = ""


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.current: Request | None = None
        self.idle_since = 0.0
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, request: Request) -> None:
        assert self.transport is not None
        self.current = request
        request.sent = time.perf_counter()
        self.transport.write(self.client.request_bytes(request.n))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        request = self.current
        if request is None:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip() == b"close":
                self.closing = True
        if len(self.buffer) < end + 4 + length:
            return
        request.status = int(head[9:12])
        if request.status != 201:
            request.error = bytes(self.buffer[end + 4 : end + 4 + length][:300]).decode(
                errors="replace"
            )
        request.answered = time.perf_counter()
        del self.buffer[: end + 4 + length]
        self.current = None
        self.client.finished(request, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        request, self.current = self.current, None
        if request is not None:
            # What httpx reports as a ReadError: the connection ended under the request.
            got = "after part of the answer" if self.buffer else "before any answer"
            request.error = f"connection closed {got} ({exc or 'by the server'})"
            request.answered = time.perf_counter()
            self.client.finished(request, None)
        self.client.lost(self)


class Client:
    def __init__(self, url: str, token: str, tag: str, max_connections: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.max_connections = max_connections
        self.prefix = (
            f"POST /v1/users HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        ).encode()
        self.tag = tag
        self.idle: deque[Connection] = deque()
        self.open = 0
        self.peak = 0
        self.queue: deque[Request] = deque()
        self.done: list[Request] = []
        self.in_flight = 0
        self.all_done = asyncio.Event()
        self.expected = 0

    def request_bytes(self, n: int) -> bytes:
        body = b'{"email":"%s-%d@example.com","name":"Bench User"}' % (self.tag.encode(), n)
        return self.prefix + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def submit(self, request: Request) -> None:
        self.in_flight += 1
        now = time.perf_counter()
        while self.idle:
            conn = self.idle.pop()  # the most recently used: the least likely to be expiring
            if now - conn.idle_since > IDLE_EXPIRY or conn.closing:
                self._close(conn)
                continue
            conn.send(request)
            return
        self.queue.append(request)
        if self.open < self.max_connections:
            self.open += 1
            asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        except OSError as exc:
            self.open -= 1
            if self.queue:
                request = self.queue.popleft()
                request.error = f"could not connect: {exc}"
                request.answered = time.perf_counter()
                self.finished(request, None)
            return
        self._ready(conn)

    def _ready(self, conn: Connection) -> None:
        self.peak = max(self.peak, self.open)
        if self.queue:
            conn.send(self.queue.popleft())
        else:
            conn.idle_since = time.perf_counter()
            self.idle.append(conn)

    def _close(self, conn: Connection) -> None:
        conn.closing = True
        if conn.transport is not None:
            conn.transport.close()

    def finished(self, request: Request, conn: Connection | None) -> None:
        self.done.append(request)
        self.in_flight -= 1
        if conn is not None:
            if conn.closing:
                self._close(conn)
            else:
                self._ready(conn)
        if len(self.done) == self.expected:
            self.all_done.set()

    def lost(self, conn: Connection) -> None:
        self.open -= 1
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        # Requests waiting for a connection get a new one.
        if self.queue and self.open < self.max_connections:
            self.open += 1
            asyncio.get_running_loop().create_task(self._connect())


async def run(args: argparse.Namespace) -> dict[str, object]:
    client = Client(args.url, args.token, args.tag, args.max_connections)
    total = int(args.rate * args.seconds)
    client.expected = total
    interval = 1.0 / args.rate
    wall0, start = time.time(), time.perf_counter() + 0.05
    cpu0 = time.process_time()
    n = 0
    while n < total:
        now = time.perf_counter()
        while n < total and start + n * interval <= now:
            client.submit(Request(n=args.first + n, due=start + n * interval))
            n += 1
        if n < total:
            # The loop's timers tick in milliseconds: a shorter sleep returns at once and the
            # loop would spin. Requests due within the millisecond go out together, late by
            # under a millisecond, which their latency counts.
            await asyncio.sleep(max(0.001, start + n * interval - time.perf_counter()))
    load_seconds = time.perf_counter() - start
    with contextlib.suppress(TimeoutError):  # the unanswered are reported as such
        await asyncio.wait_for(client.all_done.wait(), timeout=args.timeout)
    cpu = time.process_time() - cpu0
    for conn in list(client.idle):
        client._close(conn)

    def wall(t: float) -> float:
        return wall0 + (t - (start - 0.05)) if t else 0.0

    requests = sorted(client.done, key=lambda r: r.n)
    return {
        "requests": total,
        "answered": len(requests),
        "load_seconds": load_seconds,
        "cpu_seconds": cpu,
        "connections_peak": client.peak,
        "results": [
            [r.n, wall(r.due), wall(r.sent), wall(r.answered), r.status, r.error] for r in requests
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("--url", required=True, help="the api's base URL")
    parser.add_argument("--token", default=os.environ.get("LOADGEN_TOKEN", ""))
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--tag", required=True, help="addresses are <tag>-<n>@example.com")
    parser.add_argument("--first", type=int, default=0, help="the first n")
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=60.0, help="for the last answers")
    parser.add_argument("--out", required=True, help="where the results go (JSON)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    with open(args.out, "w") as out:
        json.dump(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
