"""The sandbox's Postmark templates, through the real postmarker client: the `/templates` API,
`/email/withTemplate` and `/email/batchWithTemplates`, and what they capture."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

from tests.support.postmark import Sandbox
from tests.support.settings import POSTMARK_TOKEN


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
    # Found by its metadata in its own stream, as send-once searches for it.
    found = client.call(
        "GET",
        "/messages/outbound",
        count=10,
        offset=0,
        messagestream="onboarding",
        metadata_notification_id=notification,
    )
    assert [m["MessageID"] for m in found["Messages"]] == [answer["MessageID"]]


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
