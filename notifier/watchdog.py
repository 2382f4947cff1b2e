"""A total deadline for one HTTP call made with requests, connect, send and read together.

requests' `timeout` bounds each connect and each read alone: an answer that trickles in a
byte at a time never trips it, and the call lasts as long as the server likes. Here the
session's connections report the socket they use to the call's watch, and a timer shuts that
socket down when the deadline passes; the call then fails at once, and `DeadlinePassed` says
whether it had connected (after that, the request may have reached the server).

A connection is watched by the thread that makes the call (one call per thread at a time),
so each session must be used by one thread, as requests expects anyway.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

T = TypeVar("T")


class DeadlinePassed(Exception):
    """The call did not end by its deadline and was cut."""

    def __init__(self, seconds: float, *, connected: bool) -> None:
        super().__init__(f"no complete answer within {seconds:g} s")
        self.connected = connected


class _Watch:
    """One call's deadline and the socket it is using."""

    def __init__(self) -> None:
        self.expired = False
        self.connected = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._socket = sock
            if self.expired:  # connected after the deadline: cut before anything is sent
                _shut(sock)
            else:
                self.connected = True

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._socket is not None:
                _shut(self._socket)


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for a TLS socket: it wakes a thread blocked reading
    # or writing it, without touching the TLS state that thread is using.
    with contextlib.suppress(OSError):  # already closed: nothing to wake
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_local = threading.local()


def _attach(sock: socket.socket | None) -> None:
    watch: _Watch | None = getattr(_local, "watch", None)
    if watch is not None:
        watch.attach(sock)


class _Watched:
    """What the watched connection classes add: every socket a request uses is reported."""

    sock: socket.socket | None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _attach(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self.sock)  # a kept-alive connection: connected already
        super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self) -> Any:
        _attach(self.sock)
        return super().getresponse()  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


def watched_session() -> requests.Session:
    """A session whose calls `call_with_deadline` can cut; no retries of its own."""
    session = requests.Session()
    adapter = _WatchedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _Timers:
    """One thread that expires watches at their deadlines, for every call of the process (a
    thread started per call would cost more than many calls' own work)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, _Watch]] = []
        self._pending: set[int] = set()
        self._cancelled: set[int] = set()
        self._count = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, watch: _Watch) -> int:
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="postmark-deadlines", daemon=True
                )
                self._thread.start()
            handle = next(self._count)
            self._pending.add(handle)
            heapq.heappush(self._due, (deadline, handle, watch))
            if self._due[0][1] == handle:
                self._wake.notify()
            return handle

    def cancel(self, handle: int) -> None:
        with self._wake:
            if handle in self._pending:  # not expired yet: dropped when it comes up
                self._pending.discard(handle)
                self._cancelled.add(handle)

    def _run(self) -> None:
        with self._wake:
            while True:
                while self._due and self._due[0][1] in self._cancelled:
                    self._cancelled.discard(heapq.heappop(self._due)[1])
                if not self._due:
                    self._wake.wait()
                    continue
                deadline, handle, watch = self._due[0]
                left = deadline - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                heapq.heappop(self._due)
                self._pending.discard(handle)
                watch.expire()


_timers = _Timers()


def call_with_deadline(call: Callable[[], T], deadline: float) -> T:
    """Run `call` (HTTP through a `watched_session`) in this thread and cut it at
    `deadline` (time.monotonic()). Give requests a timeout no longer than the time left too:
    it bounds the connect, before there is a socket to shut."""
    left = deadline - time.monotonic()
    watch = _Watch()
    if left <= 0:
        raise DeadlinePassed(0, connected=False)
    _local.watch = watch
    timer = _timers.add(deadline, watch)
    try:
        return call()
    except Exception as exc:
        if watch.expired:
            raise DeadlinePassed(left, connected=watch.connected) from exc
        raise
    finally:
        _timers.cancel(timer)
        _local.watch = None
