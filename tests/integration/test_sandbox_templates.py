"""The sandbox's Postmark templates, through the real postmarker client: the `/templates` API,
`/email/withTemplate` and `/email/batchWithTemplates`, and what they capture."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from sandbox.settings import TEST_TOKEN
from tests.support.postmark import Sandbox
from tests.support.settings import POSTMARK_TOKEN

MODEL = {"name": "Ada", "product": "Acme", "verify_url": "https://x/v"}


@pytest.fixture
def client(sandbox: Sandbox) -> PostmarkClient:
    return PostmarkClient(server_token=POSTMARK_TOKEN, root_api_url=sandbox.url + "/")


def alias(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def captured(sandbox: Sandbox, to: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{sandbox.url}/api/messages", params={"to": to}, timeout=10)
    answer.raise_for_status()
    found: list[dict[str, Any]] = answer.json()
    return found


def make_template(client: PostmarkClient, name: str) -> Any:
    return client.templates.create(
        Name="Welcome",
        Alias=name,
        Subject="Welcome to {{product}}, {{name}}",
        HtmlBody="<p>Hello {{name}}, <a href='{{verify_url}}'>verify</a></p>",
        TextBody="Hello {{name}}: {{verify_url}}",
    )


def test_a_template_is_created_read_listed_edited_and_deleted(client: PostmarkClient) -> None:
    name = alias("crud")
    created = make_template(client, name)
    assert created.Alias == name
    read = client.templates.get(name)
    assert (read.Subject, read.TemplateId) == (
        "Welcome to {{product}}, {{name}}",
        created.TemplateId,
    )
    assert name in [t.Alias for t in client.templates.all()]
    client.templates.edit(name, Subject="Hi {{name}}")
    edited = client.templates.get(created.TemplateId)
    assert edited.Subject == "Hi {{name}}"
    assert edited.TextBody == "Hello {{name}}: {{verify_url}}"  # not given: kept
    assert client.templates.delete(name) == f"Template {created.TemplateId} removed."
    with pytest.raises(ClientError) as gone:
        client.templates.get(name)
    assert gone.value.error_code == 1101


def test_an_alias_is_one_template(client: PostmarkClient) -> None:
    name = alias("twice")
    make_template(client, name)
    with pytest.raises(ClientError) as taken:
        make_template(client, name)
    assert taken.value.error_code == 1122


def test_a_template_no_message_could_come_from_is_refused(client: PostmarkClient) -> None:
    with pytest.raises(ClientError) as broken:
        client.templates.create(
            Name="Broken", Alias=alias("broken"), Subject="Hi", TextBody="{{/name}}"
        )
    assert broken.value.error_code == 300
    assert "does not parse" in str(broken.value)
    name = alias("bodiless")
    make_template(client, name)
    with pytest.raises(ClientError) as emptied:
        client.templates.edit(name, HtmlBody="", TextBody="")
    assert emptied.value.error_code == 300
    assert client.templates.get(name).TextBody == "Hello {{name}}: {{verify_url}}"


def test_clearing_the_captured_messages_keeps_the_templates(
    client: PostmarkClient, sandbox: Sandbox
) -> None:
    name = alias("kept")
    make_template(client, name)
    httpx.delete(f"{sandbox.url}/api/messages", timeout=10).raise_for_status()
    to = f"{name}@example.com"
    answer = client.emails.send_with_template(
        TemplateAlias=name, TemplateModel=MODEL, From="hello@acme.test", To=to
    )
    assert answer["ErrorCode"] == 0
    assert [m["Subject"] for m in captured(sandbox, to)] == ["Welcome to Acme, Ada"]


def test_sending_with_a_template_renders_it_and_escapes_only_the_html(
    client: PostmarkClient, sandbox: Sandbox
) -> None:
    name = alias("send")
    make_template(client, name)
    to = f"{name}@example.com"
    notification = str(uuid.uuid4())
    answer = client.emails.send_with_template(
        TemplateAlias=name,
        TemplateModel={
            "product": "Acme",
            "name": "<b>Ada</b>",
            "verify_url": "https://x/v?a=1&b=2",
        },
        From="Acme <hello@acme.test>",
        To=to,
        Tag="welcome",
        Metadata={"notification_id": notification},
        MessageStream="onboarding",
    )
    assert answer["ErrorCode"] == 0
    [message] = captured(sandbox, to)
    assert message["MessageID"] == answer["MessageID"]
    assert message["Subject"] == "Welcome to Acme, <b>Ada</b>"
    assert "Hello &lt;b&gt;Ada&lt;/b&gt;" in message["HtmlBody"]
    assert "https://x/v?a=1&amp;b=2" in message["HtmlBody"]
    assert message["TextBody"] == "Hello <b>Ada</b>: https://x/v?a=1&b=2"
    assert (message["TemplateAlias"], message["MessageStream"]) == (name, "onboarding")
    assert message["Metadata"] == {"notification_id": notification}

    def search(stream: str) -> list[str]:
        found = client.call(
            "GET",
            "/messages/outbound",
            count=10,
            offset=0,
            messagestream=stream,
            metadata_notification_id=notification,
        )
        return [m["MessageID"] for m in found["Messages"]]

    # Found by its metadata in its own stream, as send-once searches for it; only there.
    assert search("onboarding") == [answer["MessageID"]]
    assert search("outbound") == []


def test_a_plain_message_never_claims_a_template(client: PostmarkClient, sandbox: Sandbox) -> None:
    to = f"{alias('plain')}@example.com"
    # A stray field postmarker's `send` would not pass on, so the raw call.
    plain = {"From": "hello@acme.test", "To": to, "Subject": "Hi", "TextBody": "Hi"}
    client.call("POST", "/email", data={**plain, "TemplateAlias": "welcome"})
    [message] = captured(sandbox, to)
    assert message["TemplateAlias"] is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"TemplateModel": MODEL}, "'TemplateAlias' or a 'TemplateId'"),
        ({"TemplateAlias": "any", "TemplateModel": "Ada"}, "'TemplateModel'"),
    ],
)
def test_a_template_message_without_a_template_or_model_is_refused_with_300(
    client: PostmarkClient, sandbox: Sandbox, fields: dict[str, Any], reason: str
) -> None:
    to = f"{alias('incomplete')}@example.com"
    message = {**fields, "From": "hello@acme.test", "To": to}
    with pytest.raises(ClientError) as refused:  # raw: postmarker checks for an alias itself
        client.call("POST", "/email/withTemplate/", data=message)
    assert refused.value.error_code == 300
    assert reason in str(refused.value)
    assert captured(sandbox, to) == []


def test_the_test_token_renders_a_template_message_without_capturing(
    client: PostmarkClient, sandbox: Sandbox
) -> None:
    name = alias("dry-run")
    make_template(client, name)
    to = f"{name}@example.com"
    dry_run = PostmarkClient(server_token=TEST_TOKEN, root_api_url=sandbox.url + "/")
    answer = dry_run.emails.send_with_template(
        TemplateAlias=name, TemplateModel=MODEL, From="hello@acme.test", To=to
    )
    assert (answer["ErrorCode"], answer["Message"]) == (0, "Test job accepted")
    with pytest.raises(ClientError) as unknown:
        dry_run.emails.send_with_template(
            TemplateAlias="no-such", TemplateModel=MODEL, From="hello@acme.test", To=to
        )
    assert unknown.value.error_code == 1101
    assert captured(sandbox, to) == []


def test_a_template_batch_answers_each_message_in_place(
    client: PostmarkClient, sandbox: Sandbox
) -> None:
    name = alias("batch")
    make_template(client, name)
    good, unknown = f"{name}-a@example.com", f"{name}-b@example.com"
    inactive = f"{name}-bounced@example.com"
    first = {"name": "x", "product": "Acme", "verify_url": "u"}
    client.emails.send_with_template(  # a hard bounce makes the address inactive
        TemplateAlias=name,
        TemplateModel=first,
        From="hello@acme.test",
        To=inactive,
        Headers={"X-PM-Bounce-Type": "HardBounce"},
    )
    answers = client.emails.send_template_batch(
        {"TemplateAlias": name, "TemplateModel": first, "From": "hello@acme.test", "To": good},
        {
            "TemplateAlias": "no-such",
            "TemplateModel": first,
            "From": "hello@acme.test",
            "To": unknown,
        },
        {"TemplateAlias": name, "TemplateModel": first, "From": "hello@acme.test", "To": inactive},
    )
    assert [a["ErrorCode"] for a in answers] == [0, 1101, 406]
    assert len(captured(sandbox, good)) == 1
    assert captured(sandbox, unknown) == []


def test_an_id_python_calls_a_digit_is_an_unknown_template_not_a_crash(
    client: PostmarkClient, sandbox: Sandbox
) -> None:
    headers = {"X-Postmark-Server-Token": POSTMARK_TOKEN, "Accept": "application/json"}
    for key in ("%C2%B2", "9" * 5000):
        answer = httpx.get(f"{sandbox.url}/templates/{key}", headers=headers, timeout=10)
        assert (answer.status_code, answer.json()["ErrorCode"]) == (422, 1101)
    name = alias("digits")
    make_template(client, name)
    model = {"name": "x", "product": "Acme", "verify_url": "u"}
    answers = client.emails.send_template_batch(
        {
            "TemplateAlias": "²",
            "TemplateModel": model,
            "From": "hello@acme.test",
            "To": "a@example.com",
        },
        {
            "TemplateAlias": name,
            "TemplateModel": model,
            "From": "hello@acme.test",
            "To": f"{name}@example.com",
        },
    )
    assert [a["ErrorCode"] for a in answers] == [1101, 0]
