"""How `Postmark` sorts Postmark's answers, through the real `postmarker` client against a
tiny HTTP server on loopback whose answers each test scripts."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import parse_qs, urlsplit

import pytest

from notifier.postmark import (
    REACTIVATE_THREADS,
    SEARCH_PAGE,
    SEARCH_THREADS,
    Accepted,
    MessageResult,
    Postmark,
    PostmarkUnauthorized,
    PostmarkUnavailable,
    Rejected,
    RequestRejected,
    SendSlot,
)
from tests.support.settings import POSTMARK_TOKEN, make_notifier_settings

# The shared reference beside the checkout (`../shared`), where the project is developed.
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "postmark"
TIMEOUT = 0.5


def reference(name: str) -> dict[str, Any]:
    """A recorded Postmark answer: {"_http_status": ..., "body": ..., ...}."""
    return cast(dict[str, Any], json.loads((REFERENCE / name).read_text()))


# The recorded answers the tests replay (copied here so the tests do not need the folder).
BATCH_MIXED: list[dict[str, Any]] = [
    {
        "ErrorCode": 0,
        "Message": "OK",
        "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c392c2f817",
        "SubmittedAt": "2010-11-26T12:01:05.1794748-05:00",
        "To": "receiver1@example.com",
    },
    {
        "ErrorCode": 406,
        "Message": "You tried to send to a recipient that has been marked as inactive.",
    },
]
INVALID_TO: dict[str, Any] = {
    "ErrorCode": 300,
    "Message": "Invalid 'To' address: 'invalid@localhost'.",
}
INACTIVE_422: dict[str, Any] = {
    "ErrorCode": 406,
    "Message": "You tried to send to a recipient that has been marked as inactive.\n"
    "Found inactive addresses: hardbounce@example.com, spam@example.com.\n"
    "Inactive recipients are ones that have generated a hard bounce or a spam complaint.",
}


def test_the_replayed_answers_match_the_recorded_reference() -> None:
    if not REFERENCE.is_dir():
        pytest.skip("no Postmark reference folder here")
    assert reference("batch_response_mixed.json")["body"] == BATCH_MIXED
    errors = reference("send_error_422.json")
    assert errors["body"] == INACTIVE_422
    assert {"_http_status": 422, "body": INVALID_TO} in [
        {k: v for k, v in e.items() if not k.startswith("_source")}
        for e in errors["_other_real_examples"]
    ]


# The scripted server


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    content_type: str = "application/json"
    trickle: float = 0.0  # seconds between the bytes of the body


Hang = Literal["hang"]  # read the request, then never answer
Close = Literal["close"]  # read the request, then close the connection without a word
Script = Reply | Hang | Close


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakePostmark


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        fake = cast(_Server, self.server).fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        reply = fake.record(
            Seen(
                method=self.command,
                path=url.path,
                query=parse_qs(url.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
        )
        if reply == "hang":
            fake.released.wait(timeout=10)
            self.close_connection = True
            return
        if reply == "close":
            self.close_connection = True
            return
        assert isinstance(reply, Reply)
        raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if not reply.trickle:
            self.wfile.write(raw)
            return
        self.wfile.flush()
        for at in range(len(raw)):
            if fake.released.wait(reply.trickle):
                break
            try:
                self.wfile.write(raw[at : at + 1])
                self.wfile.flush()
            except OSError:  # the client gave up
                self.close_connection = True
                return


@dataclass
class FakePostmark:
    """Answers each request with the next scripted reply (500 when the script runs out)."""

    script: list[Script] = field(default_factory=list)
    # Paths answered the same way every time, whatever the script says.
    routes: dict[str, Script] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def then(self, *replies: Script) -> FakePostmark:
        self.script.extend(replies)
        return self

    def record(self, request: Seen) -> Script:
        with self._lock:
            self.seen.append(request)
            if request.path in self.routes:
                return self.routes[request.path]
            return self.script.pop(0) if self.script else Reply(500, {"unscripted": True})

    def stop(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def fake() -> Iterator[FakePostmark]:
    server = FakePostmark()
    try:
        yield server
    finally:
        server.stop()


def postmark_at(url: str, *, timeout: float = TIMEOUT) -> Postmark:
    settings = make_notifier_settings(
        "postgresql://x@127.0.0.1/x", "127.0.0.1:9", url, "t", postmark_timeout=timeout
    )
    return Postmark(settings)


@pytest.fixture
def postmark(fake: FakePostmark) -> Postmark:
    return postmark_at(fake.url)


def message(to: str) -> dict[str, Any]:
    return {
        "From": "Postroom <hello@postroom.test>",
        "To": to,
        "Subject": "Hello",
        "TextBody": "Hello",
        "Metadata": {"notification_id": f"n-{to}"},
    }


TWO = [message("receiver1@example.com"), message("inactive@example.com")]


async def send(postmark: Postmark, messages: list[dict[str, Any]]) -> list[MessageResult]:
    """A send as delivery makes it: under a send slot."""
    async with postmark.send_slot() as slot:
        return await postmark.send_batch(messages, slot=slot)


# send_batch: answers per message


async def test_a_mixed_batch_answer_gives_one_result_per_message_in_order(
    fake: FakePostmark, postmark: Postmark
) -> None:
    fake.then(Reply(200, BATCH_MIXED))

    results = await send(postmark, TWO)

    assert results == [
        Accepted("b7bc2f4a-e38e-4336-af7d-e6c392c2f817"),
        Rejected(406, BATCH_MIXED[1]["Message"]),
    ]
    [request] = fake.seen
    assert (request.method, request.path) == ("POST", "/email/batch")
    assert request.headers["x-postmark-server-token"] == POSTMARK_TOKEN
    assert [m["To"] for m in request.json()] == ["receiver1@example.com", "inactive@example.com"]


async def test_batch_entries_are_matched_by_position(
    fake: FakePostmark, postmark: Postmark
) -> None:
    # Failed entries carry no To: the order of the answer is all that ties them to messages.
    fake.then(
        Reply(
            200,
            [
                INVALID_TO,
                {"ErrorCode": 0, "Message": "OK", "MessageID": "m-2", "To": "b@example.com"},
                # Seen in the wild: no ErrorCode at all, "accepted, delivery may be delayed".
                {"Message": "Message accepted, but delivery may be delayed.", "MessageID": "m-3"},
                INACTIVE_422,
            ],
        )
    )

    results = await send(postmark, [message(f"{n}@example.com") for n in "abcd"])

    assert results == [
        Rejected(300, INVALID_TO["Message"]),
        Accepted("m-2"),
        Accepted("m-3"),
        Rejected(406, INACTIVE_422["Message"]),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param([BATCH_MIXED[0]], id="too-short"),
        pytest.param([*BATCH_MIXED, BATCH_MIXED[0]], id="too-long"),
        pytest.param([], id="empty"),
        pytest.param(BATCH_MIXED[0], id="an-object"),
    ],
)
async def test_a_batch_answer_of_the_wrong_shape_is_ambiguous(
    fake: FakePostmark, postmark: Postmark, answer: Any
) -> None:
    fake.then(Reply(200, answer))

    with pytest.raises(PostmarkUnavailable) as raised:
        await send(postmark, TWO)

    assert raised.value.ambiguous is True


async def test_a_batch_answer_that_is_not_json_is_ambiguous(
    fake: FakePostmark, postmark: Postmark
) -> None:
    fake.then(Reply(200, b"<html>proxy says hi</html>", content_type="text/html"))

    with pytest.raises(PostmarkUnavailable) as raised:
        await send(postmark, TWO)

    assert raised.value.ambiguous is True


async def test_batch_size_is_checked_before_calling(fake: FakePostmark, postmark: Postmark) -> None:
    with pytest.raises(ValueError, match="1 to 500"):
        await send(postmark, [])
    with pytest.raises(ValueError, match="1 to 500"):
        await send(postmark, [message("a@example.com")] * 501)
    assert fake.seen == []


# send_batch: answers for the whole call


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(
            Reply(401, {"ErrorCode": 10, "Message": "Bad or missing Server API token."}),
            id="401-json",
        ),
        pytest.param(Reply(401, b"Unauthorized", content_type="text/plain"), id="401-plain"),
        pytest.param(
            Reply(422, {"ErrorCode": 10, "Message": "Bad or missing Server API token."}),
            id="422-code-10",
        ),
    ],
)
async def test_a_bad_token_is_unauthorized(
    fake: FakePostmark, postmark: Postmark, reply: Reply
) -> None:
    fake.then(reply)

    with pytest.raises(PostmarkUnauthorized):
        await send(postmark, TWO)


@pytest.mark.parametrize(
    ("reply", "ambiguous"),
    [
        pytest.param(Reply(429, {"ErrorCode": 429, "Message": "Rate limit"}), False, id="429-json"),
        pytest.param(Reply(429, b"slow down", content_type="text/plain"), False, id="429-plain"),
        pytest.param(Reply(500, {"ErrorCode": 0, "Message": "Oops"}), True, id="500-json"),
        pytest.param(Reply(500, b"Internal error", content_type="text/plain"), True, id="500"),
        pytest.param(Reply(503, b"Service Unavailable", content_type="text/html"), True, id="503"),
        # A proxy or load balancer in front may answer JSON of its own, without ErrorCode.
        pytest.param(Reply(503, {"error": "no healthy upstream"}), True, id="503-foreign-json"),
    ],
)
async def test_retryable_answers_are_unavailable(
    fake: FakePostmark, postmark: Postmark, reply: Reply, ambiguous: bool
) -> None:
    fake.then(reply)

    with pytest.raises(PostmarkUnavailable) as raised:
        await send(postmark, TWO)

    assert raised.value.ambiguous is ambiguous


@pytest.mark.parametrize(
    "body",
    [pytest.param(INVALID_TO, id="300"), pytest.param(INACTIVE_422, id="406")],
)
async def test_a_422_with_an_error_code_rejects_the_whole_request(
    fake: FakePostmark, postmark: Postmark, body: dict[str, Any]
) -> None:
    fake.then(Reply(422, body))

    with pytest.raises(RequestRejected) as raised:
        await send(postmark, TWO)

    assert raised.value.error_code == body["ErrorCode"]
    assert body["Message"].splitlines()[0] in str(raised.value)


async def test_a_413_without_postmarks_json_rejects_the_request(
    fake: FakePostmark, postmark: Postmark
) -> None:
    # Too large is final: Postmark accepted nothing, and the same request will never fit.
    fake.then(Reply(413, b"Request Entity Too Large", content_type="text/html"))

    with pytest.raises(RequestRejected):
        await send(postmark, TWO)


# send_batch: broken connections


async def test_no_answer_within_the_timeout_is_ambiguous(
    fake: FakePostmark, postmark: Postmark
) -> None:
    fake.then("hang")

    with pytest.raises(PostmarkUnavailable) as raised:
        await send(postmark, TWO)

    assert raised.value.ambiguous is True
    assert len(fake.seen) == 1  # the request did reach the server


async def test_a_connection_closed_after_the_request_is_ambiguous(
    fake: FakePostmark, postmark: Postmark
) -> None:
    fake.then("close")

    with pytest.raises(PostmarkUnavailable) as raised:
        await send(postmark, TWO)

    assert raised.value.ambiguous is True
    assert len(fake.seen) == 1


async def test_a_refused_connection_is_not_ambiguous() -> None:
    # A port bound but not listening: connecting is refused, and no other test can take it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        postmark = postmark_at(f"http://127.0.0.1:{port}")

        with pytest.raises(PostmarkUnavailable) as raised:
            await send(postmark, TWO)

    assert raised.value.ambiguous is False


# deadlines and capacity


ONE_ACCEPTED = [
    {"ErrorCode": 0, "Message": "OK", "MessageID": "m-1", "To": "receiver1@example.com"},
    {"ErrorCode": 0, "Message": "OK", "MessageID": "m-2", "To": "inactive@example.com"},
]


async def test_a_trickling_answer_is_cut_at_the_total_deadline(
    fake: FakePostmark, postmark: Postmark
) -> None:
    # A byte every 0.1 s never trips a per-read timeout of 0.5 s: the whole answer would
    # take ~20 s. The total deadline cuts it at 0.5 s.
    fake.then(Reply(200, ONE_ACCEPTED, trickle=0.1))
    started = time.monotonic()

    with pytest.raises(PostmarkUnavailable) as raised:
        await send(postmark, TWO)

    elapsed = time.monotonic() - started
    assert raised.value.ambiguous is True  # the request reached the server
    assert "POSTMARK_TIMEOUT" in str(raised.value)
    assert TIMEOUT <= elapsed < TIMEOUT + 0.4, elapsed
    assert len(fake.seen) == 1


async def test_a_send_that_could_not_start_in_its_window_is_not_made(
    fake: FakePostmark, postmark: Postmark
) -> None:
    fake.then(Reply(200, ONE_ACCEPTED))

    with pytest.raises(PostmarkUnavailable) as raised:
        await postmark.send_batch(TWO, slot=SendSlot(start_by=time.monotonic() - 0.01))

    assert raised.value.ambiguous is False  # nothing left: the rows go back without doubt
    assert fake.seen == []


async def test_slow_reactivations_and_searches_never_hold_up_a_send(fake: FakePostmark) -> None:
    # Far more slow reactivations and searches than they have threads, all hanging.
    postmark = postmark_at(fake.url, timeout=5.0)
    fake.routes["/bounces/7/activate"] = "hang"
    fake.routes["/messages/outbound"] = "hang"
    fake.routes["/email/batch"] = Reply(200, ONE_ACCEPTED)
    slow = [asyncio.ensure_future(postmark.reactivate(7)) for _ in range(12)]
    slow += [asyncio.ensure_future(postmark.find_sent(f"n-{n}", "outbound")) for n in range(20)]
    while len(fake.seen) < REACTIVATE_THREADS + SEARCH_THREADS:
        await asyncio.sleep(0.01)

    results = await send(postmark, TWO)

    assert results == [Accepted("m-1"), Accepted("m-2")]
    assert not any(call.done() for call in slow)
    # Each kind stayed within its own threads.
    assert [s.path for s in fake.seen].count("/bounces/7/activate") == REACTIVATE_THREADS
    assert [s.path for s in fake.seen].count("/messages/outbound") == SEARCH_THREADS
    fake.released.set()
    for call in slow:
        call.cancel()
    await asyncio.gather(*slow, return_exceptions=True)


async def test_a_reactivation_answers_within_the_timeout_even_behind_others(
    fake: FakePostmark, postmark: Postmark
) -> None:
    fake.routes["/bounces/7/activate"] = "hang"
    started = time.monotonic()

    outcomes = await asyncio.gather(
        *(postmark.reactivate(7) for _ in range(REACTIVATE_THREADS * 2)), return_exceptions=True
    )

    elapsed = time.monotonic() - started
    assert all(isinstance(outcome, PostmarkUnavailable) for outcome in outcomes), outcomes
    # Those that got a thread were cut by the deadline; the others gave up waiting for one
    # (or got a thread as it came, with no time left).
    assert elapsed < TIMEOUT + 0.4, elapsed


# find_sent


def outbound(total: int, *messages: tuple[str, str, str | None]) -> Reply:
    """A /messages/outbound page of (MessageID, ReceivedAt, notification_id) messages."""
    return Reply(
        200,
        {
            "TotalCount": total,
            "Messages": [
                {
                    "MessageID": message_id,
                    "ReceivedAt": received_at,
                    "Metadata": {} if notification is None else {"notification_id": notification},
                    "Status": "Sent",
                }
                for message_id, received_at, notification in messages
            ],
        },
    )


async def test_find_sent_gives_the_earliest_matching_message(
    fake: FakePostmark, postmark: Postmark
) -> None:
    fake.then(
        outbound(
            4,
            ("later", "2026-01-02T10:00:05.5000000-05:00", "n-1"),
            ("earliest", "2026-01-02T10:00:01.1234567-05:00", "n-1"),
            ("other-notification", "2026-01-02T09:00:00.0000000-05:00", "n-2"),
            ("no-metadata", "2026-01-02T08:00:00.0000000-05:00", None),
        )
    )

    assert await postmark.find_sent("n-1", "outbound") == "earliest"

    [request] = fake.seen
    assert (request.method, request.path) == ("GET", "/messages/outbound")
    assert request.query["metadata_notification_id"] == ["n-1"]
    assert request.query["messagestream"] == ["outbound"]  # the stream the sends go on
    assert request.query["offset"] == ["0"]
    assert request.query["count"] == [str(SEARCH_PAGE)]
    assert request.headers["x-postmark-server-token"] == POSTMARK_TOKEN


async def test_find_sent_is_none_when_postmark_holds_nothing(
    fake: FakePostmark, postmark: Postmark
) -> None:
    fake.then(outbound(0))

    assert await postmark.find_sent("n-1", "outbound") is None
    assert len(fake.seen) == 1


async def test_find_sent_is_none_when_no_message_matches(
    fake: FakePostmark, postmark: Postmark
) -> None:
    fake.then(outbound(2, ("a", "2026-01-02T10:00:00-05:00", "n-2"), ("b", "x", None)))

    assert await postmark.find_sent("n-1", "outbound") is None


async def test_find_sent_reads_every_page(fake: FakePostmark, postmark: Postmark) -> None:
    total = SEARCH_PAGE + 3
    first_page = [
        (f"m-{n}", f"2026-01-02T10:{n // 60:02d}:{n % 60:02d}-05:00", "n-1")
        for n in range(10, 10 + SEARCH_PAGE)
    ]
    fake.then(
        outbound(total, *first_page),
        outbound(
            total,
            ("m-late", "2026-01-02T11:00:00-05:00", "n-1"),
            ("m-first", "2026-01-02T09:59:59-05:00", "n-1"),
            ("m-foreign", "2026-01-02T09:00:00-05:00", "n-9"),
        ),
    )

    assert await postmark.find_sent("n-1", "outbound") == "m-first"

    assert [r.query["offset"] for r in fake.seen] == [["0"], [str(SEARCH_PAGE)]]
    assert all(r.query["metadata_notification_id"] == ["n-1"] for r in fake.seen)


async def test_find_sent_stops_on_an_empty_page(fake: FakePostmark, postmark: Postmark) -> None:
    # TotalCount promises more than the pages hold (the index moved): no endless paging.
    fake.then(outbound(500, ("m-1", "2026-01-02T10:00:00-05:00", "n-1")), outbound(500))

    assert await postmark.find_sent("n-1", "outbound") == "m-1"
    assert len(fake.seen) == 2


async def test_find_sent_compares_times_not_strings_across_utc_offsets(
    fake: FakePostmark, postmark: Postmark
) -> None:
    # Postmark stamps ReceivedAt in US Eastern time: on the night clocks go back, 01:30-04:00
    # (05:30 UTC) comes before 01:10-05:00 (06:10 UTC).
    fake.then(
        outbound(
            2,
            ("second", "2025-11-02T01:10:00.0000000-05:00", "n-1"),
            ("first", "2025-11-02T01:30:00.0000000-04:00", "n-1"),
        )
    )

    assert await postmark.find_sent("n-1", "outbound") == "first"


async def test_find_sent_errors_are_sorted_like_sends(
    fake: FakePostmark, postmark: Postmark
) -> None:
    fake.then(Reply(401, {"ErrorCode": 10, "Message": "Bad token"}), "close")

    with pytest.raises(PostmarkUnauthorized):
        await postmark.find_sent("n-1", "outbound")
    with pytest.raises(PostmarkUnavailable):
        await postmark.find_sent("n-1", "outbound")


async def test_a_message_postmarker_refuses_before_sending_is_rejected_not_raised(
    fake: FakePostmark, postmark: Postmark
) -> None:
    """postmarker asserts a body before any request: a definite refusal, nothing left."""
    bodiless = {k: v for k, v in message("a@example.com").items() if k != "TextBody"}
    with pytest.raises(RequestRejected, match="refused before sending"):
        await send(postmark, [bodiless])
    assert fake.seen == []
