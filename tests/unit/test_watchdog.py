"""A Postmark call's total deadline (notifier/watchdog.py), against a local HTTP server that
answers at once or a byte at a time: the trickle is cut at its deadline, however many calls
wait with later or earlier deadlines, and a call that ended in time is never cut afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from notifier.watchdog import DeadlinePassed, call_with_deadline, watched_session


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"x" * 20
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/trickle":
            try:
                for byte in body:  # one byte every 0.1 s: no single read ever times out
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the caller cut the call
                self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _get(session: requests.Session, url: str) -> bytes:
    return session.get(url, timeout=5).content


def test_a_trickling_answer_is_cut_at_its_deadline(server: str) -> None:
    started = time.monotonic()
    with watched_session() as session, pytest.raises(DeadlinePassed) as cut:
        call_with_deadline(lambda: _get(session, f"{server}/trickle"), started + 0.5)
    took = time.monotonic() - started
    assert cut.value.connected  # the request was sent: its outcome is unknown
    assert 0.45 < took < 1.0  # the answer alone would take 2 s


def test_each_call_is_cut_at_its_own_deadline_whatever_the_order(server: str) -> None:
    # Later deadlines registered first: the earlier ones must not wait behind them.
    deadlines = [1.6, 1.2, 0.8, 0.4]
    started = time.monotonic()

    def one(seconds: float) -> float:
        with watched_session() as session, pytest.raises(DeadlinePassed):
            call_with_deadline(lambda: _get(session, f"{server}/trickle"), started + seconds)
        return time.monotonic() - started

    with ThreadPoolExecutor(len(deadlines)) as pool:
        ended = list(pool.map(one, deadlines))
    for seconds, took in zip(deadlines, ended, strict=True):
        assert seconds - 0.05 < took < seconds + 0.4


def test_a_call_that_ended_in_time_is_never_cut_later(server: str) -> None:
    session = watched_session()
    for _ in range(50):
        assert (
            call_with_deadline(lambda: _get(session, server), time.monotonic() + 0.3) == b"x" * 20
        )
    time.sleep(0.5)  # every deadline above has passed: the kept-alive connection is intact
    assert call_with_deadline(lambda: _get(session, server), time.monotonic() + 1) == b"x" * 20
