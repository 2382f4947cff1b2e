"""The Postmark sandbox as a real server, spoken to by the real `postmarker` client.

What the notifier relies on: Postmark's answer shapes and error codes, metadata search after an
ambiguous timeout, bounce and complaint webhooks that suppress addresses, and injected faults.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import requests
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError
from pydantic import SecretStr

from notifier.postmark import Postmark, PostmarkUnavailable
from postroom_cli.embedded import free_port
from tests.support.names import unique
from tests.support.settings import make_notifier_settings

T = TypeVar("T")

SERVER_TOKEN = "sandbox-test-server-token"
HOOK_USER = "postmark-hooks"
HOOK_PASSWORD = "sandbox-test-hook-password"


def wait_for(probe: Callable[[], T | None], *, what: str, timeout: float = 10.0) -> T:
    """Poll until `probe` returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@dataclass
class Hook:
    authorization: str | None
    content_type: str | None
    raw: bytes

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.raw)
        return parsed


@dataclass
class HookReceiver:
    """A tiny webhook endpoint: records every POST it accepts; refuses (500) the first event
    for each address in `refuse_once`."""

    url: str = ""
    hooks: list[Hook] = field(default_factory=list)
    refuse_once: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_message(self, message_id: str) -> list[Hook]:
        with self.lock:
            return [hook for hook in self.hooks if hook.body.get("MessageID") == message_id]


def _handler(receiver: HookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            email = json.loads(raw).get("Email")
            with receiver.lock:
                refused = email in receiver.refuse_once
                if refused:
                    receiver.refuse_once.discard(email)
                else:
                    hook = Hook(
                        self.headers.get("Authorization"), self.headers.get("Content-Type"), raw
                    )
                    receiver.hooks.append(hook)
            self.send_response(500 if refused else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def receiver() -> Iterator[HookReceiver]:
    hooks = HookReceiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hooks))
    hooks.url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/postmark"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hooks
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass(frozen=True)
class LiveSandbox:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=10, **kwargs)

    def captured(self, **params: str) -> list[dict[str, Any]]:
        answer = self.api("GET", "/api/messages", params=params)
        assert answer.status_code == 200
        messages: list[dict[str, Any]] = answer.json()
        return messages


@pytest.fixture(scope="module")
def live_sandbox(receiver: HookReceiver) -> Iterator[LiveSandbox]:
    """`postroom sandbox` as a process of its own, posting webhooks to `receiver`."""
    port = free_port()
    env = {
        **os.environ,
        "SANDBOX_HOST": "127.0.0.1",
        "SANDBOX_PORT": str(port),
        "POSTMARK_SERVER_TOKEN": SERVER_TOKEN,
        "SANDBOX_WEBHOOK_URL": receiver.url,
        "SANDBOX_WEBHOOK_DELAY_MS": "0",
        "WEBHOOK_USERNAME": HOOK_USER,
        "WEBHOOK_PASSWORD": HOOK_PASSWORD,
        "SANDBOX_FAULT_SEED": "7",
        # As docker-compose.yml's: the name other containers reach it by, and loopback.
        "SANDBOX_ALLOWED_HOSTS": "sandbox, 127.0.0.1",
        "LOG_LEVEL": "warning",
    }
    log_path = Path(tempfile.mkstemp(prefix="postroom-sandbox-", suffix=".log")[1])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sandbox"], env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, f"the sandbox exited: {log_path.read_text()}"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, what="the sandbox to answer /healthz", timeout=30)
        yield LiveSandbox(url, process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_path.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _no_faults_after(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "live_sandbox" in request.fixturenames:
        sandbox: LiveSandbox = request.getfixturevalue("live_sandbox")
        sandbox.api("DELETE", "/api/faults")


@pytest.fixture
def make_client(live_sandbox: LiveSandbox) -> Iterator[Callable[..., PostmarkClient]]:
    """postmarker clients aimed at the sandbox; their connection pools are closed afterwards."""
    clients: list[PostmarkClient] = []

    def make(token: str = SERVER_TOKEN, **options: Any) -> PostmarkClient:
        client = PostmarkClient(server_token=token, root_api_url=f"{live_sandbox.url}/", **options)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.session.close()


@pytest.fixture
def postmark(make_client: Callable[..., PostmarkClient]) -> PostmarkClient:
    return make_client()


def address(tag: str) -> str:
    return f"{unique(tag)}@example.com"


def message(to: str, **fields: Any) -> dict[str, Any]:
    return {"From": "Postroom <hello@example.com>", "To": to, "TextBody": "Hello", **fields}


def search(postmark: PostmarkClient, **filters: Any) -> dict[str, Any]:
    """Outbound message search; postmarker's `all()` has no metadata filters, `call` passes any."""
    found: dict[str, Any] = postmark.call("GET", "/messages/outbound", **filters)
    return found


def test_a_send_is_captured_with_every_field_and_answered_like_postmark(
    live_sandbox: LiveSandbox, postmark: PostmarkClient
) -> None:
    to = f"{address('to')}, Ada Lovelace <{address('ada')}>"
    cc, bcc = address("cc"), address("bcc")
    answer = postmark.emails.send(
        From="Postroom <hello@example.com>",
        To=to,
        Cc=cc,
        Bcc=bcc,
        ReplyTo="help@example.com",
        Subject="Welcome aboard",
        HtmlBody="<p>Hello</p>",
        TextBody="Hello",
        Tag="welcome",
        Metadata={"notification_id": "n-1", "user_id": "u-1"},
        Headers={"X-Campaign": "spring"},
    )

    assert set(answer) == {"To", "SubmittedAt", "MessageID", "ErrorCode", "Message"}
    assert answer["To"] == to
    assert (answer["ErrorCode"], answer["Message"]) == (0, "OK")
    assert uuid.UUID(answer["MessageID"]).version == 4
    assert datetime.fromisoformat(answer["SubmittedAt"]).utcoffset() is not None

    [captured] = live_sandbox.captured(to=cc.upper())
    assert captured["MessageID"] == answer["MessageID"]
    assert captured["From"] == "Postroom <hello@example.com>"
    assert (captured["To"], captured["Cc"], captured["Bcc"]) == (to, cc, bcc)
    assert captured["Subject"] == "Welcome aboard"
    assert (captured["HtmlBody"], captured["TextBody"]) == ("<p>Hello</p>", "Hello")
    assert captured["Tag"] == "welcome"
    assert captured["Metadata"] == {"notification_id": "n-1", "user_id": "u-1"}
    assert captured["Headers"] == [{"Name": "X-Campaign", "Value": "spring"}]
    assert captured["MessageStream"] == "outbound"
    assert captured["ReplyTo"] == "help@example.com"
    assert datetime.fromisoformat(captured["ReceivedAt"]).utcoffset() is not None
    assert live_sandbox.api("GET", f"/api/messages/{answer['MessageID']}").json() == captured


def test_a_wrong_or_missing_token_is_refused_with_error_code_10(
    live_sandbox: LiveSandbox, make_client: Callable[..., PostmarkClient]
) -> None:
    to = address("token")
    with pytest.raises(ClientError) as refused:
        make_client("not-the-token").emails.send(**message(to))
    assert refused.value.error_code == 10
    assert isinstance(refused.value.__cause__, requests.HTTPError)
    assert refused.value.__cause__.response is not None
    assert refused.value.__cause__.response.status_code == 401

    missing = live_sandbox.api("POST", "/email", json=message(to))
    assert missing.status_code == 401
    assert missing.json()["ErrorCode"] == 10
    assert live_sandbox.captured(to=to) == []


def test_the_test_token_validates_without_capturing(
    live_sandbox: LiveSandbox, make_client: Callable[..., PostmarkClient]
) -> None:
    to = address("dry-run")
    client = make_client("POSTMARK_API_TEST")
    answer = client.emails.send(**message(to))
    assert (answer["ErrorCode"], answer["Message"]) == (0, "Test job accepted")
    with pytest.raises(ClientError) as refused:
        client.emails.send(**message("not-an-address"))
    assert refused.value.error_code == 300
    assert live_sandbox.captured(to=to) == []


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"To": "someone@localhost"}, "Invalid 'To' address: 'someone@localhost'"),
        ({"Cc": "ok@example.com, broken"}, "Invalid 'Cc' address"),
        ({"From": "nobody"}, "Invalid 'From' address"),
        ({"TextBody": None, "HtmlBody": None}, "TextBody or HtmlBody"),
        ({"Metadata": {"field_name_of_21_chrs": "x"}}, "Field names are limited to 20"),
        ({"Metadata": {"count": 3}}, "must be a string"),
    ],
)
def test_an_invalid_message_is_refused_with_error_code_300(
    live_sandbox: LiveSandbox, postmark: PostmarkClient, fields: dict[str, Any], reason: str
) -> None:
    to = address("invalid")
    with pytest.raises(ClientError) as refused:
        postmark.call("POST", "/email", data={**message(to), **fields})
    assert refused.value.error_code == 300
    assert refused.value.__cause__.response.status_code == 422
    assert reason in str(refused.value)
    assert live_sandbox.captured(to=to) == []


def test_json_is_required(live_sandbox: LiveSandbox) -> None:
    answer = live_sandbox.api(
        "POST",
        "/email",
        content=json.dumps(message(address("form"))),
        headers={"X-Postmark-Server-Token": SERVER_TOKEN, "Content-Type": "text/plain"},
    )
    assert answer.status_code == 415
    assert answer.json()["ErrorCode"] == 409


def test_a_batch_answers_each_message_in_its_position(
    live_sandbox: LiveSandbox, postmark: PostmarkClient
) -> None:
    first, second, third = address("b1"), "not-an-address", address("b3")
    answers = postmark.emails.send_batch(message(first), message(second), message(third))

    assert [a["ErrorCode"] for a in answers] == [0, 300, 0]
    assert answers[1] == {"ErrorCode": 300, "Message": "Invalid 'To' address: 'not-an-address'."}
    assert [answers[0]["To"], answers[2]["To"]] == [first, third]
    assert live_sandbox.captured(to=first)[0]["MessageID"] == answers[0]["MessageID"]
    assert live_sandbox.captured(to=third)[0]["MessageID"] == answers[2]["MessageID"]


def test_a_batch_of_more_than_500_is_refused_whole_with_error_code_410(
    live_sandbox: LiveSandbox, postmark: PostmarkClient
) -> None:
    to = address("big-batch")
    # postmarker splits big batches itself; the raw call shows what Postmark answers.
    with pytest.raises(ClientError) as refused:
        postmark.call("POST", "/email/batch", data=[message(to)] * 501)
    assert refused.value.error_code == 410
    assert live_sandbox.captured(to=to) == []


def test_metadata_search_finds_exactly_the_message_with_that_metadata(
    postmark: PostmarkClient,
) -> None:
    wanted = unique("notification")
    to = address("search")
    sent = [
        postmark.emails.send(**message(to, Metadata={"notification_id": unique("other")})),
        postmark.emails.send(**message(to, Metadata={"notification_id": wanted}, Tag="t")),
        postmark.emails.send(**message(to, Metadata={"user_id": wanted})),
    ]

    found = search(postmark, count=50, offset=0, metadata_notification_id=wanted)
    assert found["TotalCount"] == 1
    [hit] = found["Messages"]
    assert hit["MessageID"] == sent[1]["MessageID"]
    assert hit["Metadata"] == {"notification_id": wanted}
    assert hit["To"] == [{"Email": to, "Name": None}]
    assert hit["Recipients"] == [to]
    assert (hit["Status"], hit["Tag"], hit["MessageStream"]) == ("Sent", "t", "outbound")
    assert search(postmark, count=50, offset=0, recipient=to)["TotalCount"] == 3
    assert search(postmark, count=50, offset=0, metadata_notification_id="none")["TotalCount"] == 0

    with pytest.raises(ClientError) as refused:
        search(postmark, metadata_notification_id=wanted)  # count and offset are required
    assert refused.value.error_code == 700


def test_the_search_looks_in_one_message_stream_the_transactional_one_unless_told(
    postmark: PostmarkClient,
) -> None:
    wanted = unique("notification")
    to = address("streams")
    on_default = postmark.emails.send(**message(to, Metadata={"notification_id": wanted}))
    on_notices = postmark.emails.send(
        **message(to, Metadata={"notification_id": wanted}, MessageStream="notices")
    )

    def found(**stream: str) -> list[str]:
        page = search(postmark, count=50, offset=0, metadata_notification_id=wanted, **stream)
        return [hit["MessageID"] for hit in page["Messages"]]

    assert found() == [on_default["MessageID"]]
    assert found(messagestream="outbound") == [on_default["MessageID"]]
    assert found(messagestream="notices") == [on_notices["MessageID"]]
    assert found(messagestream="broadcasts") == []


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_hard_bounce_posts_a_webhook_and_suppresses_the_address_until_reactivated(
    receiver: HookReceiver, postmark: PostmarkClient
) -> None:
    to = "hardbounce@bounce-testing.postmarkapp.com"
    metadata = {"notification_id": unique("n")}
    sent = postmark.emails.send(**message(to, Metadata=metadata, Tag="welcome", Subject="Hi"))
    assert sent["ErrorCode"] == 0

    [hook] = wait_for(lambda: receiver.for_message(sent["MessageID"]), what="the bounce webhook")
    assert hook.authorization == _basic(HOOK_USER, HOOK_PASSWORD)
    assert hook.content_type == "application/json"
    bounce = hook.body
    assert bounce["RecordType"] == "Bounce"
    assert (bounce["Type"], bounce["TypeCode"]) == ("HardBounce", 1)
    assert (bounce["Email"], bounce["MessageID"]) == (to, sent["MessageID"])
    assert (bounce["Metadata"], bounce["Tag"]) == (metadata, "welcome")
    assert (bounce["MessageStream"], bounce["Subject"]) == ("outbound", "Hi")
    assert (bounce["Inactive"], bounce["CanActivate"]) == (True, True)
    assert bounce["From"] == "Postroom <hello@example.com>"
    assert isinstance(bounce["ID"], int)
    assert bounce["ID"] > 2**53
    assert re.search(rf'"ID":\s*{bounce["ID"]}[,}}]', hook.raw.decode())  # a number, not a string
    assert datetime.fromisoformat(bounce["BouncedAt"]).utcoffset() is not None
    assert {"Name", "Description", "Details", "ServerID", "BouncedAt"} <= set(bounce)

    with pytest.raises(ClientError) as refused:
        postmark.emails.send(**message(to))
    assert refused.value.error_code == 406
    assert refused.value.__cause__.response.status_code == 422
    assert "inactive" in str(refused.value)
    assert to in str(refused.value)

    assert postmark.bounces.get(bounce["ID"]).Inactive is True
    activated = postmark.bounces.activate(bounce["ID"])
    assert activated["Message"] == "OK"
    assert (activated["Bounce"]["ID"], activated["Bounce"]["Inactive"]) == (bounce["ID"], False)
    assert postmark.emails.send(**message(to))["ErrorCode"] == 0


def test_a_spam_complaint_posts_its_own_record_type_and_cannot_be_reactivated(
    receiver: HookReceiver, postmark: PostmarkClient
) -> None:
    to = "spamcomplaint@bounce-testing.postmarkapp.com"
    sent = postmark.emails.send(**message(to, Metadata={"user_id": "u-9"}))

    [hook] = wait_for(lambda: receiver.for_message(sent["MessageID"]), what="the complaint")
    complaint = hook.body
    assert (complaint["RecordType"], complaint["Type"]) == ("SpamComplaint", "SpamComplaint")
    assert complaint["TypeCode"] == 100001
    assert (complaint["Email"], complaint["Metadata"]) == (to, {"user_id": "u-9"})
    assert (complaint["Inactive"], complaint["CanActivate"]) == (True, False)
    assert complaint["ID"] > 2**53

    with pytest.raises(ClientError) as refused:
        postmark.bounces.activate(complaint["ID"])
    assert refused.value.error_code == 1003
    with pytest.raises(ClientError) as suppressed:
        postmark.emails.send(**message(to))
    assert suppressed.value.error_code == 406


def test_the_bounce_header_bounces_any_address_and_soft_bounces_do_not_suppress(
    receiver: HookReceiver, postmark: PostmarkClient
) -> None:
    to = address("soft")
    sent = postmark.emails.send(**message(to, Headers={"X-PM-Bounce-Type": "SoftBounce"}))

    [hook] = wait_for(lambda: receiver.for_message(sent["MessageID"]), what="the soft bounce")
    assert (hook.body["Type"], hook.body["TypeCode"], hook.body["Email"]) == (
        "SoftBounce",
        4096,
        to,
    )
    assert hook.body["Inactive"] is False
    assert postmark.emails.send(**message(to))["ErrorCode"] == 0


def test_a_webhook_the_receiver_refuses_is_retried(
    live_sandbox: LiveSandbox, receiver: HookReceiver, postmark: PostmarkClient
) -> None:
    to = address("retried")
    with receiver.lock:
        receiver.refuse_once.add(to)
    sent = postmark.emails.send(**message(to, Headers={"X-PM-Bounce-Type": "HardBounce"}))

    [hook] = wait_for(lambda: receiver.for_message(sent["MessageID"]), what="the retried webhook")
    assert hook.body["Email"] == to

    def delivered() -> dict[str, Any] | None:
        for record in live_sandbox.api("GET", "/api/webhooks").json():
            if record["MessageID"] == sent["MessageID"] and record["Status"] == "delivered":
                return dict(record)
        return None

    record = wait_for(delivered, what="the delivery record")
    assert record["Attempts"] == 2


def test_an_unknown_bounce_cannot_be_activated(postmark: PostmarkClient) -> None:
    with pytest.raises(ClientError) as refused:
        postmark.bounces.activate(2**60)
    assert refused.value.error_code == 1001


@pytest.mark.parametrize(
    "bounce_id",
    [
        "%C2%B2",  # "²": a digit to Python's str.isdigit, not to int()
        "9" * 5000,  # past int()'s limit on digits
    ],
)
def test_a_bounce_id_that_is_not_an_id_is_not_found_like_any_unknown_one(
    live_sandbox: LiveSandbox, bounce_id: str
) -> None:
    headers = {"X-Postmark-Server-Token": SERVER_TOKEN, "Accept": "application/json"}

    got = live_sandbox.api("GET", f"/bounces/{bounce_id}", headers=headers)
    activated = live_sandbox.api("PUT", f"/bounces/{bounce_id}/activate", headers=headers)

    for answer in (got, activated):
        assert answer.status_code == 422
        assert answer.json() == {"ErrorCode": 1001, "Message": "Bounce was not found."}


def test_its_own_api_refuses_a_body_that_is_not_json_with_415(live_sandbox: LiveSandbox) -> None:
    body = json.dumps({"error_rate": 1.0})

    for headers in ({"Content-Type": "text/plain"}, {}):
        answer = live_sandbox.api("PUT", "/api/faults", content=body, headers=headers)
        assert answer.status_code == 415
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"].endswith("unsupported-media-type")

    assert live_sandbox.api("GET", "/api/faults").json()["error_rate"] == 0.0
    document = live_sandbox.api("GET", "/openapi.json").json()
    assert "415" in document["paths"]["/api/faults"]["put"]["responses"]
    assert "unsupported-media-type" in document["components"]["schemas"]["Problem"]["description"]
    as_json = {"Content-Type": "application/json; charset=utf-8"}
    accepted = live_sandbox.api("PUT", "/api/faults", content=body, headers=as_json)
    assert (accepted.status_code, accepted.json()["error_rate"]) == (200, 1.0)


def test_it_answers_only_to_the_host_names_it_is_given(
    live_sandbox: LiveSandbox, postmark: PostmarkClient
) -> None:
    to = address("named")
    sent = postmark.emails.send(**message(to))
    port = live_sandbox.url.rsplit(":", 1)[1]

    def inbox_as(host: str) -> httpx.Response:
        return live_sandbox.api("GET", "/api/messages", params={"to": to}, headers={"Host": host})

    named = inbox_as(f"sandbox:{port}")
    assert named.status_code == 200
    assert [found["MessageID"] for found in named.json()] == [sent["MessageID"]]
    # SANDBOX_ALLOWED_HOSTS replaces the loopback names it defaults to.
    for host in (f"localhost:{port}", f"evil.test:{port}", "sandbox.evil.test"):
        refused = inbox_as(host)
        assert refused.status_code == 400, host
        assert sent["MessageID"] not in refused.text


@pytest.mark.parametrize("status", [429, 500, 503])
def test_an_injected_error_captures_nothing(
    live_sandbox: LiveSandbox, postmark: PostmarkClient, status: int
) -> None:
    before = live_sandbox.api("GET", "/api/stats").json()
    put = live_sandbox.api("PUT", "/api/faults", json={"error_rate": 1.0, "error_status": status})
    assert put.json()["error_rate"] == 1.0
    to = address("fault")

    with pytest.raises(ClientError) as failed:
        postmark.emails.send(**message(to))
    assert failed.value.__cause__.response.status_code == status
    assert failed.value.error_code == status
    with pytest.raises(ClientError):
        postmark.emails.send_batch(message(to))
    assert live_sandbox.captured(to=to) == []
    after = live_sandbox.api("GET", "/api/stats").json()
    assert after["errors_injected"] - before["errors_injected"] == 2
    assert after["captured"] == before["captured"]

    live_sandbox.api("DELETE", "/api/faults")
    assert postmark.emails.send(**message(to))["ErrorCode"] == 0


def test_an_injected_timeout_still_captures_the_message_for_the_search_to_find(
    live_sandbox: LiveSandbox, make_client: Callable[..., PostmarkClient]
) -> None:
    live_sandbox.api("PUT", "/api/faults", json={"timeout_rate": 1.0, "timeout_ms": 2000})
    impatient = make_client(timeout=0.3)
    notification_id = unique("ambiguous")
    to = address("timeout")

    with pytest.raises(requests.exceptions.Timeout):
        impatient.emails.send(**message(to, Metadata={"notification_id": notification_id}))

    live_sandbox.api("DELETE", "/api/faults")
    found = search(impatient, count=1, offset=0, metadata_notification_id=notification_id)
    assert found["TotalCount"] == 1
    assert found["Messages"][0]["Recipients"] == [to]
    assert live_sandbox.api("GET", "/api/stats").json()["timeouts_injected"] >= 1


def test_faults_are_validated_and_updated_field_by_field(live_sandbox: LiveSandbox) -> None:
    assert live_sandbox.api("PUT", "/api/faults", json={"error_rate": 1.5}).status_code == 422
    assert live_sandbox.api("PUT", "/api/faults", json={"error_status": 404}).status_code == 422
    assert live_sandbox.api("PUT", "/api/faults", json={"latency_ms": -1}).status_code == 422
    assert live_sandbox.api("PUT", "/api/faults", json={"surprise": 1}).status_code == 422

    live_sandbox.api("PUT", "/api/faults", json={"latency_ms": 50})
    live_sandbox.api("PUT", "/api/faults", json={"timeout_rate": 0.25})
    assert live_sandbox.api("GET", "/api/faults").json() == {
        "error_rate": 0.0,
        "error_status": 503,
        "latency_ms": 50,
        "timeout_rate": 0.25,
        "timeout_ms": 30000,
        "timeout_accepts": True,
        "search_delay_ms": 0,
        "trickle_ms": 0,
        "trickle_on": ["send"],
    }
    reset = live_sandbox.api("DELETE", "/api/faults").json()
    assert (reset["latency_ms"], reset["timeout_rate"]) == (0, 0.0)


def test_clearing_forgets_messages_bounces_and_suppressions(
    live_sandbox: LiveSandbox, receiver: HookReceiver, postmark: PostmarkClient
) -> None:
    to = address("cleared")
    sent = postmark.emails.send(**message(to, Headers={"X-PM-Bounce-Type": "HardBounce"}))
    [hook] = wait_for(lambda: receiver.for_message(sent["MessageID"]), what="the bounce")
    with pytest.raises(ClientError):
        postmark.emails.send(**message(to))

    assert live_sandbox.api("DELETE", "/api/messages").status_code == 204

    assert live_sandbox.captured() == []
    assert live_sandbox.api("GET", f"/api/messages/{sent['MessageID']}").status_code == 404
    with pytest.raises(ClientError) as gone:
        postmark.bounces.get(hook.body["ID"])
    assert gone.value.error_code == 1001
    assert postmark.emails.send(**message(to))["ErrorCode"] == 0


def test_the_inbox_lists_messages_and_shows_html_only_inside_a_sandboxed_frame(
    live_sandbox: LiveSandbox, postmark: PostmarkClient
) -> None:
    subject = f"Verify <b>{unique('subject')}</b>"
    html = '<p>Hi &amp; welcome</p><script>alert("owned")</script><img src=x onerror=alert(1)>'
    link = "http://127.0.0.1:8000/verify-email?token=abc&x=1"
    sent = postmark.emails.send(
        **message(address("inbox"), Subject=subject, HtmlBody=html, TextBody=f"Open {link}.")
    )

    listing = live_sandbox.api("GET", "/")
    assert listing.status_code == 200
    assert listing.headers["content-type"].startswith("text/html")
    assert f'href="/messages/{sent["MessageID"]}"' in listing.text
    assert "Verify &lt;b&gt;" in listing.text
    assert "<b>subject" not in listing.text

    page = live_sandbox.api("GET", f"/messages/{sent['MessageID']}")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]  # no scripts at all
    frame = re.search(r'<iframe sandbox srcdoc="([^"]*)"', page.text)
    assert frame is not None, "the HTML part is shown in a sandboxed iframe"
    assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt;" in frame.group(1)
    assert "<script" not in page.text
    assert "<img" not in page.text
    assert f'<a href="{link.replace("&", "&amp;")}"' in page.text
    assert "Hi &amp;amp; welcome" in frame.group(1)  # escaped once more for the attribute

    missing = live_sandbox.api("GET", f"/messages/{uuid.uuid4()}")
    assert missing.status_code == 404


def test_a_search_delay_hides_new_messages_from_search_but_not_from_the_capture_list(
    live_sandbox: LiveSandbox, postmark: PostmarkClient
) -> None:
    delay = 1.5
    to = address("search-delay")
    earlier_id = unique("before-delay")
    earlier = postmark.emails.send(**message(to, Metadata={"notification_id": earlier_id}))
    put = live_sandbox.api("PUT", "/api/faults", json={"search_delay_ms": int(delay * 1000)})
    assert put.status_code == 200
    assert put.json()["search_delay_ms"] == 1500

    notification_id = unique("lagging")
    started = time.monotonic()
    sent = postmark.emails.send(**message(to, Metadata={"notification_id": notification_id}))
    assert sent["ErrorCode"] == 0

    [captured] = live_sandbox.captured(metadata_notification_id=notification_id)
    assert captured["MessageID"] == sent["MessageID"]
    query = {"count": 10, "offset": 0, "metadata_notification_id": notification_id}
    assert search(postmark, **query) == {"TotalCount": 0, "Messages": []}
    # A message accepted before the fault was turned on is in the index already.
    before = search(postmark, count=10, offset=0, metadata_notification_id=earlier_id)
    assert before["TotalCount"] == 1
    assert before["Messages"][0]["MessageID"] == earlier["MessageID"]

    misses: list[float] = []

    def indexed() -> dict[str, Any] | None:
        asked = time.monotonic()
        found = search(postmark, **query)
        if found["TotalCount"]:
            return found
        misses.append(asked)
        return None

    found = wait_for(indexed, what="the delayed message in the search", timeout=delay + 5)
    elapsed = time.monotonic() - started
    assert elapsed >= delay, f"found after {elapsed:.3f}s, before the {delay}s delay"
    assert max(misses) - started >= delay - 0.5, "still hidden until close to the delay"
    assert [hit["MessageID"] for hit in found["Messages"]] == [sent["MessageID"]]


@pytest.mark.parametrize(
    ("accepts", "captured"), [(False, 0), (True, 1)], ids=["request-lost", "answer-lost"]
)
def test_an_injected_timeout_captures_only_when_timeout_accepts(
    live_sandbox: LiveSandbox,
    make_client: Callable[..., PostmarkClient],
    accepts: bool,
    captured: int,
) -> None:
    hold = 0.8
    faults = {"timeout_rate": 1.0, "timeout_ms": int(hold * 1000), "timeout_accepts": accepts}
    put = live_sandbox.api("PUT", "/api/faults", json=faults)
    assert put.status_code == 200
    assert put.json()["timeout_accepts"] is accepts
    stats_before = live_sandbox.api("GET", "/api/stats").json()
    impatient = make_client(timeout=0.3)
    notification_id = unique("timed-out")
    to = address("timed-out")

    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        impatient.emails.send(**message(to, Metadata={"notification_id": notification_id}))
    assert time.monotonic() - started < hold
    time.sleep(max(0.0, started + hold + 0.5 - time.monotonic()))  # past the held answer
    live_sandbox.api("DELETE", "/api/faults")

    assert len(live_sandbox.captured(to=to)) == captured
    assert len(live_sandbox.captured(metadata_notification_id=notification_id)) == captured
    found = search(impatient, count=10, offset=0, metadata_notification_id=notification_id)
    assert found["TotalCount"] == captured
    stats_after = live_sandbox.api("GET", "/api/stats").json()
    assert stats_after["timeouts_injected"] - stats_before["timeouts_injected"] == 1
    assert stats_after["captured"] - stats_before["captured"] == captured


def test_a_lost_request_is_answered_504_once_the_timeout_has_passed(
    live_sandbox: LiveSandbox,
) -> None:
    faults = {"timeout_rate": 1.0, "timeout_ms": 800, "timeout_accepts": False}
    live_sandbox.api("PUT", "/api/faults", json=faults)
    to = address("patient")

    started = time.monotonic()
    answer = live_sandbox.api(
        "POST", "/email", json=message(to), headers={"X-Postmark-Server-Token": SERVER_TOKEN}
    )
    assert time.monotonic() - started >= 0.8
    assert answer.status_code == 504
    assert answer.json()["ErrorCode"] == 504
    assert live_sandbox.captured(to=to) == []


def test_the_timeout_accepts_and_search_delay_faults_are_echoed_validated_and_reset(
    live_sandbox: LiveSandbox,
) -> None:
    defaults = {
        "error_rate": 0.0,
        "error_status": 503,
        "latency_ms": 0,
        "timeout_rate": 0.0,
        "timeout_ms": 30000,
        "timeout_accepts": True,
        "search_delay_ms": 0,
        "trickle_ms": 0,
        "trickle_on": ["send"],
    }
    assert live_sandbox.api("GET", "/api/faults").json() == defaults
    for refused in (
        {"search_delay_ms": -1},
        {"search_delay_ms": 600_001},
        {"timeout_accepts": "maybe"},
        {"trickle_ms": -1},
        {"trickle_ms": 60_001},
        {"trickle_on": ["webhooks"]},
    ):
        answer = live_sandbox.api("PUT", "/api/faults", json=refused)
        assert 400 <= answer.status_code < 500, refused
    assert live_sandbox.api("GET", "/api/faults").json() == defaults

    changed = {**defaults, "timeout_accepts": False, "search_delay_ms": 250}
    put = live_sandbox.api(
        "PUT", "/api/faults", json={"timeout_accepts": False, "search_delay_ms": 250}
    )
    assert put.status_code == 200
    assert put.json() == changed
    assert live_sandbox.api("GET", "/api/faults").json() == changed

    reset = live_sandbox.api("DELETE", "/api/faults")
    assert reset.status_code == 200
    assert (reset.json()["search_delay_ms"], reset.json()["timeout_accepts"]) == (0, True)
    assert live_sandbox.api("GET", "/api/faults").json() == defaults


def test_a_trickle_answers_the_calls_it_names_a_byte_at_a_time(
    live_sandbox: LiveSandbox, receiver: HookReceiver, postmark: PostmarkClient
) -> None:
    """Each byte comes well within a read timeout, so a client that bounds each read waits
    for all of them; the work behind the answer is done before it starts."""
    to = address("trickle")
    sent = postmark.emails.send(**message(to, Headers={"X-PM-Bounce-Type": "HardBounce"}))
    [hook] = wait_for(
        lambda: [h for h in receiver.hooks if h.body.get("Email") == to], what="the bounce"
    )
    put = live_sandbox.api(
        "PUT", "/api/faults", json={"trickle_ms": 5, "trickle_on": ["search", "reactivate"]}
    )
    assert put.json()["trickle_on"] == ["search", "reactivate"]
    session = requests.Session()
    headers = {"X-Postmark-Server-Token": SERVER_TOKEN, "Accept": "application/json"}

    def timed(method: str, path: str, **kwargs: Any) -> tuple[float, requests.Response]:
        started = time.monotonic()
        answer = session.request(
            method, f"{live_sandbox.url}{path}", headers=headers, timeout=0.5, **kwargs
        )
        return time.monotonic() - started, answer

    send_took, _ = timed("POST", "/email", json=message(address("quick")))
    search_took, found = timed(
        "GET", "/messages/outbound", params={"count": 1, "offset": 0, "recipient": to}
    )
    activate_took, activated = timed("PUT", f"/bounces/{hook.body['ID']}/activate")
    session.close()

    assert send_took < 0.5  # not named: answered at once
    assert found.json()["Messages"][0]["MessageID"] == sent["MessageID"]
    assert search_took >= 0.005 * (len(found.content) - 1)
    assert activated.json()["Bounce"]["Inactive"] is False
    assert activate_took >= 0.005 * (len(activated.content) - 1)
    assert live_sandbox.api("GET", "/api/stats").json()["trickles_injected"] == 2


def test_the_notifiers_postmark_client_cuts_a_trickling_answer_at_postmark_timeout(
    live_sandbox: LiveSandbox,
    make_client: Callable[..., PostmarkClient],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A byte every 25 ms never trips requests' per-read timeout of 1 s: a plain client waits
    out the whole answer. POSTMARK_TIMEOUT=1 is a total deadline: the notifier's call ends
    after about 1 s, and since the request had left, it is in doubt."""
    live_sandbox.api("PUT", "/api/faults", json={"trickle_ms": 25, "trickle_on": ["send"]})
    plain = make_client(timeout=1.0)
    started = time.monotonic()
    [answer] = plain.emails.send_batch(message(address("plain")))
    plain_took = time.monotonic() - started

    settings = make_notifier_settings(
        "postgresql://x@127.0.0.1/x",
        "127.0.0.1:9",
        live_sandbox.url,
        "t",
        postmark_server_token=SecretStr(SERVER_TOKEN),
        postmark_timeout=1.0,
    )
    client = Postmark(settings)
    to = address("cut")

    async def send() -> float:
        async with client.send_slot() as slot:
            started = time.monotonic()
            with pytest.raises(PostmarkUnavailable) as raised:
                await client.send_batch([message(to)], slot=slot)
            assert raised.value.ambiguous is True
            return time.monotonic() - started

    try:
        cut_took = asyncio.run(send())
    finally:
        client.close()

    with capsys.disabled():
        print(f"\n[trickle] plain client {plain_took:.2f} s; the notifier's call {cut_took:.2f} s")
    assert answer["ErrorCode"] == 0
    assert plain_took > 3.0, plain_took  # the whole answer, ~170 bytes 25 ms apart
    assert 1.0 <= cut_took < 1.5, cut_took
    assert len(live_sandbox.captured(to=to)) == 1  # accepted: hence the doubt
