"""The dev inbox's JSON API and pages on a real sandbox over HTTP: search, the raw view, deleting
one message and clearing them all, without losing what Postmark's outbound search knows (the
notifier's proof that a message went out)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from postmarker.core import PostmarkClient

from tests.support.names import address, unique
from tests.support.postmark import Sandbox
from tests.support.settings import POSTMARK_TOKEN

PROBLEM = "application/problem+json"


@pytest.fixture
def inbox(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=10) as client:
        yield client


@pytest.fixture
def postmark(sandbox: Sandbox) -> Iterator[PostmarkClient]:
    client = PostmarkClient(server_token=POSTMARK_TOKEN, root_api_url=sandbox.url + "/")
    try:
        yield client
    finally:
        client.session.close()


def send(postmark: PostmarkClient, to: str, **fields: Any) -> str:
    sent = postmark.emails.send(
        **{"From": "Postroom <hello@example.com>", "To": to, "TextBody": "Hello", **fields}
    )
    message_id: str = sent["MessageID"]
    return message_id


def listed(inbox: httpx.Client, **params: str) -> list[str]:
    answer = inbox.get("/api/messages", params=params)
    assert answer.status_code == 200
    return [message["MessageID"] for message in answer.json()]


def outbound(postmark: PostmarkClient, notification_id: str) -> list[str]:
    """What Postmark's outbound search, the notifier's send-once evidence, finds."""
    found = postmark.call(
        "GET", "/messages/outbound", count=50, offset=0, metadata_notification_id=notification_id
    )
    return [message["MessageID"] for message in found["Messages"]]


def assert_not_found(answer: httpx.Response, path: str) -> None:
    assert answer.status_code == 404
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert (problem["status"], problem["title"]) == (404, "Message not found")
    assert problem["type"].endswith("message-not-found")
    assert problem["instance"] == path


def test_the_list_is_searched_by_recipient_subject_and_tag_in_any_case(
    inbox: httpx.Client, postmark: PostmarkClient
) -> None:
    word = unique("harbour")
    ada, lin = address("ada"), address("lin")
    to_ada = send(postmark, f"Ada Lovelace <{ada}>", Subject="Your receipt", Tag="receipts")
    about = send(postmark, lin, Subject=f"News about the {word}", Tag="news")
    tagged = send(postmark, lin, Subject="Weekly digest", Tag=word)

    # The search box (`q`): part of an address or a name, of the subject, or the tag.
    assert listed(inbox, q=ada.split("@")[0].upper()) == [to_ada]
    assert to_ada in listed(inbox, q="LOVELACE")
    assert listed(inbox, q=word.upper()) == [tagged, about]
    # One field each: a whole address, part of the subject, the whole tag.
    assert listed(inbox, to=lin.upper()) == [tagged, about]
    assert listed(inbox, to=lin.split("@")[0]) == []
    assert listed(inbox, subject=f"about the {word}".upper()) == [about]
    assert listed(inbox, tag=word.upper()) == [tagged]
    assert listed(inbox, tag=word[:-1]) == []
    # Conditions add up.
    assert listed(inbox, to=lin, q="digest") == [tagged]
    assert listed(inbox, q=unique("nothing")) == []


def test_the_raw_view_has_every_field_postmark_received_and_both_parts(
    inbox: httpx.Client, postmark: PostmarkClient
) -> None:
    to, cc, bcc = address("raw-to"), address("raw-cc"), address("raw-bcc")
    html = '<p class="x">Hello &amp; <a href="https://example.com/v?a=1&b=2">verify</a></p>'
    message_id = send(
        postmark,
        to,
        Cc=cc,
        Bcc=bcc,
        ReplyTo="help@example.com",
        Subject="Raw <view>",
        Tag="raw",
        MessageStream="notices",
        Metadata={"notification_id": "n-1", "user_id": "u-1"},
        Headers={"X-Campaign": "spring"},
        HtmlBody=html,
        TextBody="Hello,\nverify: https://example.com/v",
    )

    raw = inbox.get(f"/api/messages/{message_id}/raw")

    assert raw.status_code == 200
    body = raw.json()
    headers = [(header["Name"], header["Value"]) for header in body["Headers"]]
    assert headers[0] == ("MessageID", message_id)
    assert headers[1][0] == "ReceivedAt"
    assert headers[2:] == [
        ("From", "Postroom <hello@example.com>"),
        ("To", to),
        ("Cc", cc),
        ("Bcc", bcc),
        ("ReplyTo", "help@example.com"),
        ("Subject", "Raw <view>"),
        ("Tag", "raw"),
        ("MessageStream", "notices"),
        ("TrackLinks", "None"),  # postmarker sends it unless told otherwise
        ("Metadata[notification_id]", "n-1"),
        ("Metadata[user_id]", "u-1"),
        ("X-Campaign", "spring"),
    ]
    assert body["TextBody"] == "Hello,\nverify: https://example.com/v"
    assert body["HtmlBody"] == html  # the source, untouched


def test_the_raw_view_names_the_template_a_message_was_sent_with(
    inbox: httpx.Client, postmark: PostmarkClient
) -> None:
    alias = unique("welcome")
    postmark.templates.create(
        Name="Welcome", Alias=alias, Subject="Hi {{name}}", TextBody="Hello {{name}}"
    )
    to = address("templated")
    sent = postmark.emails.send_with_template(
        TemplateAlias=alias, TemplateModel={"name": "Ada"}, From="hello@example.com", To=to
    )

    raw = inbox.get(f"/api/messages/{sent['MessageID']}/raw").json()

    headers = {header["Name"]: header["Value"] for header in raw["Headers"]}
    assert (headers["TemplateAlias"], headers["Subject"]) == (alias, "Hi Ada")
    assert (raw["TextBody"], raw["HtmlBody"]) == ("Hello Ada", None)


def test_a_line_break_in_a_header_value_cannot_pass_for_another_header(
    inbox: httpx.Client, postmark: PostmarkClient
) -> None:
    message_id = send(
        postmark, address("crlf"), Subject="Hi\r\nX-Forged: yes", Headers={"X-Note": "a\nb"}
    )

    raw = inbox.get(f"/api/messages/{message_id}/raw").json()

    headers = [(header["Name"], header["Value"]) for header in raw["Headers"]]
    assert ("Subject", "Hi\\r\\nX-Forged: yes") in headers
    assert ("X-Note", "a\\nb") in headers
    assert "X-Forged" not in [name for name, _ in headers]


def test_deleting_a_message_takes_it_out_of_the_inbox_but_not_out_of_postmarks_search(
    inbox: httpx.Client, postmark: PostmarkClient
) -> None:
    to, notification = address("deleted"), unique("notification")
    gone = send(postmark, to, Metadata={"notification_id": notification})
    kept = send(postmark, to)

    deleted = inbox.delete(f"/api/messages/{gone}")

    assert deleted.status_code == 204
    assert listed(inbox, to=to) == [kept]
    for path in (f"/api/messages/{gone}", f"/api/messages/{gone}/raw"):
        assert_not_found(inbox.get(path), path)
    assert_not_found(inbox.delete(f"/api/messages/{gone}"), f"/api/messages/{gone}")
    assert inbox.get(f"/messages/{gone}").status_code == 404  # its page too
    # Postmark never forgets a sent message because a recipient deleted it; nor does the
    # sandbox, or the notifier would take an answered send for a lost one and send it again.
    assert outbound(postmark, notification) == [gone]
    details = postmark.call("GET", f"/messages/outbound/{gone}/details")
    assert details["MessageID"] == gone


def test_clearing_the_inbox_keeps_postmarks_record_of_what_was_sent(
    inbox: httpx.Client, postmark: PostmarkClient
) -> None:
    notification = unique("notification")
    sent = send(postmark, address("cleared"), Metadata={"notification_id": notification})

    assert inbox.delete("/api/messages").status_code == 204

    assert listed(inbox) == []
    assert_not_found(inbox.get(f"/api/messages/{sent}"), f"/api/messages/{sent}")
    assert outbound(postmark, notification) == [sent]
    after = send(postmark, address("after"))
    assert listed(inbox) == [after]


def test_a_missing_message_is_a_404_problem(inbox: httpx.Client) -> None:
    path = f"/api/messages/{unique('missing')}"
    assert_not_found(inbox.get(path), path)


def test_the_pages_search_delete_and_clear_with_plain_forms(
    inbox: httpx.Client, postmark: PostmarkClient
) -> None:
    word = unique("pages")
    first = send(postmark, address("page"), Subject=f"First {word}")
    second = send(postmark, address("page"), Subject=f"Second {word}")

    found = inbox.get("/", params={"q": word.upper()})
    assert f'href="/messages/{first}"' in found.text
    assert f'href="/messages/{second}"' in found.text
    assert "form-action 'self'" in found.headers["content-security-policy"]
    assert "No messages match." in inbox.get("/", params={"q": unique("none")}).text

    deleted = inbox.post(f"/messages/{first}/delete")
    assert (deleted.status_code, deleted.headers["location"]) == (303, "/")
    assert f'href="/messages/{first}"' not in inbox.get("/", params={"q": word}).text

    confirm = inbox.get("/clear")
    assert '<form method="post" action="/clear">' in confirm.text
    assert listed(inbox, q=word) == [second]  # asking changes nothing
    cleared = inbox.post("/clear")
    assert (cleared.status_code, cleared.headers["location"]) == (303, "/")
    assert listed(inbox) == []


def test_another_sites_form_cannot_delete(inbox: httpx.Client, postmark: PostmarkClient) -> None:
    message_id = send(postmark, address("csrf"))
    elsewhere = [
        {"Sec-Fetch-Site": "cross-site", "Origin": "null"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://attacker.example"},  # a browser without Sec-Fetch-Site
    ]

    for headers in elsewhere:
        assert inbox.post(f"/messages/{message_id}/delete", headers=headers).status_code == 403
        assert inbox.post("/clear", headers=headers).status_code == 403

    assert message_id in listed(inbox)
    here = {"Sec-Fetch-Site": "same-origin", "Origin": "null"}  # Chromium, under no-referrer
    assert inbox.post(f"/messages/{message_id}/delete", headers=here).status_code == 303
    assert message_id not in listed(inbox)


def test_every_page_shows_a_subject_with_markup_as_text(
    inbox: httpx.Client, postmark: PostmarkClient
) -> None:
    subject = f"<script>alert(1)</script> {unique('markup')}"
    message_id = send(
        postmark,
        address("markup"),
        Subject=subject,
        Tag="<b>tag</b>",
        Metadata={"note": "<img src=x>"},
        HtmlBody="<script>alert(2)</script>",
    )
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"

    pages = [
        inbox.get("/", params={"q": subject}),
        inbox.get(f"/messages/{message_id}"),
        inbox.get(f"/messages/{message_id}/raw"),
    ]

    for page in pages:
        assert page.status_code == 200
        assert escaped in page.text
        assert "<script" not in page.text
        assert "<b>tag" not in page.text
    assert "&lt;img src=x&gt;" in pages[2].text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in pages[2].text  # the HTML part's source
    # What is typed in the search box comes back escaped in its value.
    assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;' in pages[0].text


@pytest.mark.parametrize("unknown", ["too", "metadata_", "unknown"])
def test_an_unknown_search_parameter_is_refused_not_ignored(
    inbox: httpx.Client, postmark: PostmarkClient, unknown: str
) -> None:
    send(postmark, address("typo"))  # what an ignored parameter would list

    answer = inbox.get("/api/messages", params={unknown: "x", "q": "typo"})
    page = inbox.get("/", params={unknown: "x"})

    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["errors"] == [
        {"loc": ["query", unknown], "msg": "Unknown query parameter", "type": "extra_forbidden"}
    ]
    assert page.status_code == 422
    assert f"Unknown search parameter: <code>{unknown}</code>" in page.text
    assert 'href="/messages/' not in page.text


def test_every_search_parameter_folds_case_alike(
    inbox: httpx.Client, postmark: PostmarkClient
) -> None:
    word = unique("fold")
    to = f"Straße.{word}@Example.com"
    sent = send(postmark, to, Subject=f"Grüße aus İstanbul {word}", Tag=f"Straße-{word}")

    # ß folds to ss and İ to i wherever text is compared: a whole address, the subject, the
    # tag, and the search box.
    assert listed(inbox, to=f"strasse.{word}@example.com") == [sent]
    assert listed(inbox, subject=f"GRÜSSE AUS ISTANBUL {word}") == [sent]
    assert listed(inbox, tag=f"STRASSE-{word}") == [sent]
    assert listed(inbox, q=f"istanbul {word}") == [sent]
    assert listed(inbox, q=f"strasse.{word}") == [sent]


def test_a_page_served_under_another_host_name_cannot_read_or_delete(
    inbox: httpx.Client, postmark: PostmarkClient, sandbox: Sandbox
) -> None:
    # DNS rebinding: a page of evil.test, whose name now points at 127.0.0.1, is same-origin
    # with the inbox as far as the browser knows; only the Host header tells.
    to = address("rebinding")
    message_id = send(postmark, to, Subject="Verify your address")
    port = sandbox.url.rsplit(":", 1)[1]
    evil = {"Host": f"evil.test:{port}", "Origin": f"http://evil.test:{port}"}

    answers = [
        inbox.get("/api/messages", headers=evil),
        inbox.get(f"/api/messages/{message_id}", headers=evil),
        inbox.get(f"/api/messages/{message_id}/raw", headers=evil),
        inbox.get("/", headers=evil),
        inbox.get(f"/messages/{message_id}", headers=evil),
        inbox.post(f"/messages/{message_id}/delete", headers=evil),
        inbox.post("/clear", headers=evil),
        inbox.delete(f"/api/messages/{message_id}", headers=evil),
        inbox.delete("/api/messages", headers=evil),
    ]

    for answer in answers:
        assert answer.status_code == 400
        assert message_id not in answer.text
        assert "Verify" not in answer.text
    assert listed(inbox, to=to) == [message_id]
    # The loopback names, with the port, are the inbox's own.
    for host in (f"localhost:{port}", f"[::1]:{port}", "127.0.0.1", "LOCALHOST"):
        answer = inbox.get("/api/messages", params={"to": to}, headers={"Host": host})
        assert answer.status_code == 200, host
        assert [message["MessageID"] for message in answer.json()] == [message_id]
