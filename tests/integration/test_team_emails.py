"""A team's own emails end to end: their catalogue and templates folder, their brand, the
user's locale, their streams, tags and metadata, and an email type they added; a notifier
whose templates are broken refuses to start."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from postmarker.core import PostmarkClient

from notifier.app import create_app as create_notifier
from postroom.settings import ConfigError
from tests.support.names import address
from tests.support.postmark import Sandbox
from tests.support.settings import POSTMARK_TOKEN, make_notifier_settings
from tests.support.stack import Stack, running_stack
from tests.support.waiting import wait_until

TEAM = Path(__file__).parents[1] / "fixtures" / "team_emails"
BRAND: dict[str, Any] = {
    "notifier_templates_dir": TEAM,
    "brand_name": "Acme",
    "brand_support_email": "help@acme.test",
    "mail_from": "Acme <hello@acme.test>",
    "mail_reply_to": "support@acme.test",
}


async def register_losing_the_answer(
    stack: Stack, db: asyncpg.Connection, email: str, name: str, *, search_delay_ms: int = 0
) -> None:
    """Register `email` while Postmark accepts the welcome and its answer is lost (the
    message hidden from Postmark's search for `search_delay_ms`); return once that attempt
    timed out, with the faults cleared."""
    faults: dict[str, object] = {"timeout_rate": 1.0, "timeout_ms": 1500, "timeout_accepts": True}
    if search_delay_ms:
        faults["search_delay_ms"] = search_delay_ms
    await stack.sandbox.put("/api/faults", json=faults)
    await stack.api.post("/v1/users", json={"email": email, "name": name})

    async def answer_lost() -> bool:
        row = await db.fetchrow(
            "SELECT attempts, attempt_open FROM notifications WHERE recipient = $1", email
        )
        return bool(row and row["attempts"] >= 1 and not row["attempt_open"])

    await wait_until(answer_lost, what="the first attempt to time out", within=30)
    await stack.sandbox.delete("/api/faults")


def by_tag(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {message["Tag"]: message for message in messages}


@pytest.mark.kafka
async def test_a_team_folder_decides_the_emails_in_the_users_locale(
    database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    old, new, plain = address("acme-old"), address("acme-new"), address("acme-plain")
    async with running_stack(database_url, kafka_bootstrap, sandbox, **BRAND) as stack:
        created = await stack.api.post(
            "/v1/users", json={"email": old, "name": "Ada", "locale": "de-AT"}
        )
        assert created.status_code == 201
        user_id = created.json()["id"]
        await stack.api.post("/v1/users", json={"email": plain, "name": "Bob"})
        [welcome] = await stack.wait_messages(old)
        [english] = await stack.wait_messages(plain)

        # Their subject (a file of theirs), in the user's language (de-AT -> de), on their
        # stream, with their tag, metadata, sender and reply-to; the body is the built-in
        # German one in their brand.
        assert welcome["Subject"] == "Ada, willkommen bei Acme"
        assert (welcome["MessageStream"], welcome["Tag"]) == ("onboarding", "acme-welcome")
        assert welcome["Metadata"]["campaign"] == "spring"
        assert welcome["Metadata"]["user_id"] == user_id
        assert (welcome["From"], welcome["ReplyTo"]) == (
            "Acme <hello@acme.test>",
            "support@acme.test",
        )
        assert '<html lang="de">' in welcome["HtmlBody"]
        assert "Danke für Ihre Anmeldung" in welcome["TextBody"]
        assert "help@acme.test" in welcome["TextBody"]
        assert "Postroom" not in welcome["HtmlBody"] + welcome["TextBody"]
        assert english["Subject"] == "Bob, welcome to Acme"  # no locale: DEFAULT_LOCALE

        # The address changes: the old one hears of it twice (the built-in notice, and the
        # security notice the team added without code), the new one is asked to verify.
        changed = await stack.api.patch(f"/v1/users/{user_id}", json={"email": new})
        assert changed.status_code == 200
        told = by_tag(await stack.wait_messages(old, count=3))
        [verify] = await stack.wait_messages(new)
        notice = told["security"]
        assert notice["Subject"] == "Sicherheitshinweis: Ihre Adresse bei Acme wurde geändert"
        assert notice["MessageStream"] == "security"
        assert new in notice["TextBody"]
        assert told["email_change_notice"]["MessageStream"] == "outbound"
        assert "geändert" in told["email_change_notice"]["Subject"]
        assert verify["Tag"] == "verify_new_email"
        assert "neue E-Mail-Adresse" in verify["Subject"]

        # A new link asked for: in German too, to the current address.
        asked = await stack.api.post(f"/v1/users/{user_id}/verification-emails")
        assert asked.status_code == 202
        messages = await stack.wait_messages(new, count=2)
        resent = by_tag(messages)["verify_email"]
        assert resent["Subject"] == "Ihr neuer Bestätigungslink für Acme"
        assert "/verify-email?token=" in resent["TextBody"]
        await stack.wait_status(new, "sent", count=2)


@pytest.mark.kafka
async def test_a_lost_answer_on_the_catalogues_stream_is_found_not_sent_again(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    """The welcome goes on the catalogue's `onboarding` stream, not POSTMARK_MESSAGE_STREAM:
    the search after a lost answer must look there."""
    email = address("acme-lost")
    async with running_stack(
        database_url,
        kafka_bootstrap,
        sandbox,
        postmark_timeout=1.0,
        notifier_lease=2.0,
        **BRAND,
    ) as stack:
        await stack.wait_consuming()
        await register_losing_the_answer(stack, db, email, "Lost")
        [sent] = await stack.wait_status(email, "sent", within=30)
        messages = await stack.messages(email)

    assert [m["MessageStream"] for m in messages] == ["onboarding"]
    assert (sent["message_id"], sent["attempts"]) == (messages[0]["MessageID"], 1)


def broken_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "emails"
    (folder / "en").mkdir(parents=True)
    (folder / "en" / "goodbye.txt").write_text("Bye {{ nmae }}\n", encoding="utf-8")
    return folder


def test_a_notifier_with_a_broken_template_refuses_to_start_in_one_line(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    settings = make_notifier_settings(
        "postgresql://postgres@127.0.0.1:1/unused",
        "127.0.0.1:1",
        sandbox.url,
        "unused",
        notifier_templates_dir=broken_folder(tmp_path),
    )
    with pytest.raises(ConfigError) as refused:
        create_notifier(settings)
    assert str(refused.value) == (
        "emails: goodbye (user.deleted, en): en/goodbye.txt line 1: 'nmae' is undefined"
    )


def test_the_notifier_process_exits_2_with_the_reason(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NOTIFIER_", "BRAND_", "POSTMARK_", "DATABASE_"))
    }
    env |= {
        "APP_ENV": "development",
        "API_TOKENS": "dev-only-token-0123456789",
        "EMAIL_TOKEN_SECRET": "dev-only-secret-0123456789abcdef0123",
        "POSTMARK_SERVER_TOKEN": "dev-only-postmark",
        "WEBHOOK_USERNAME": "postmark",
        "WEBHOOK_PASSWORD": "dev-only-webhook-password",
        "NOTIFIER_TEMPLATES_DIR": str(broken_folder(tmp_path)),
        "NOTIFIER_PORT": "1",  # never reached
    }
    done = subprocess.run(
        [sys.executable, "-m", "notifier"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("postroom notifier: configuration error: emails: goodbye")
    assert "'nmae' is undefined" in lines[0]


# -- Postmark's own templates --------------------------------------------------------------


def postmark_catalogue(tmp_path: Path, sandbox: Sandbox) -> tuple[Path, str, str]:
    """A catalogue whose welcome is a Postmark template (one per locale), and the two
    templates created in the sandbox with the real client."""
    suffix = uuid.uuid4().hex[:8]
    english, german = f"acme-welcome-{suffix}", f"acme-welcome-de-{suffix}"
    client = PostmarkClient(server_token=POSTMARK_TOKEN, root_api_url=sandbox.url + "/")
    for alias, subject in ((english, "Welcome to {{product}}"), (german, "Willkommen, {{name}}")):
        client.templates.create(
            Name=alias,
            Alias=alias,
            Subject=subject,
            HtmlBody="<p>{{name}}: <a href='{{verify_url}}'>{{verify_url}}</a></p>",
            TextBody="{{name}} ({{email}}, {{locale}}): {{verify_url}}",
        )
    folder = tmp_path / "emails"
    folder.mkdir()
    (folder / "emails.yaml").write_text(
        "emails:\n"
        "  user.registered:\n"
        "    - name: welcome\n"
        "      verification_link: true\n"
        "      stream: onboarding\n"
        f"      postmark_template: {english}\n"
        f"      postmark_template_locales: {{de: {german}}}\n"
        "  user.verification_requested:\n"
        "    - name: verify_email\n"
        "      verification_link: true\n",
        encoding="utf-8",
    )
    return folder, english, german


@pytest.mark.kafka
async def test_an_email_sent_with_a_postmark_template_end_to_end(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    folder, english, german = postmark_catalogue(tmp_path, sandbox)
    swiss, plain = address("pm-swiss"), address("pm-plain")
    async with running_stack(
        database_url, kafka_bootstrap, sandbox, notifier_templates_dir=folder, brand_name="Acme"
    ) as stack:
        await stack.api.post("/v1/users", json={"email": swiss, "name": "Ada", "locale": "de-CH"})
        await stack.api.post("/v1/users", json={"email": plain, "name": "Bob"})
        [message] = await stack.wait_messages(swiss)
        [other] = await stack.wait_messages(plain)
        [sent] = await stack.wait_status(swiss, "sent")

        assert (message["TemplateAlias"], message["Subject"]) == (german, "Willkommen, Ada")
        assert (other["TemplateAlias"], other["Subject"]) == (english, "Welcome to Acme")
        assert message["MessageStream"] == "onboarding"
        assert message["Metadata"]["notification_id"] == sent["id"]
        assert sent["message_id"] == message["MessageID"]
        assert message["TextBody"].startswith(f"Ada ({swiss}, de): http://testserver/verify-email?")
        link = message["TextBody"].rsplit(" ", 1)[1]
        page = await stack.api.get(link.removeprefix("http://testserver"))
        assert page.status_code == 200
        assert swiss in page.text


@pytest.mark.kafka
async def test_a_lost_answer_for_a_template_email_is_found_by_search_not_sent_twice(
    tmp_path: Path,
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
) -> None:
    folder, english, _ = postmark_catalogue(tmp_path, sandbox)
    email = address("pm-lost")
    async with running_stack(
        database_url,
        kafka_bootstrap,
        sandbox,
        notifier_templates_dir=folder,
        postmark_timeout=1.0,
        notifier_lease=2.0,
    ) as stack:
        await stack.wait_consuming()
        # Postmark takes the message, and the answer never comes back.
        await register_losing_the_answer(stack, db, email, "Lost")
        [sent] = await stack.wait_status(email, "sent", within=30)
        messages = await stack.messages(email)

    assert [(m["TemplateAlias"], m["MessageStream"]) for m in messages] == [(english, "onboarding")]
    assert (sent["message_id"], sent["attempts"]) == (messages[0]["MessageID"], 1)


def test_templates_check_asks_postmark_for_every_alias(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from postroom_cli.main import app

    folder, _, german = postmark_catalogue(tmp_path, sandbox)
    monkeypatch.setenv("NOTIFIER_TEMPLATES_DIR", str(folder))
    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", POSTMARK_TOKEN)
    monkeypatch.setenv("POSTMARK_API_URL", sandbox.url + "/")
    assert CliRunner().invoke(app, ["templates", "check", "--postmark"]).exit_code == 0
    PostmarkClient(server_token=POSTMARK_TOKEN, root_api_url=sandbox.url + "/").templates.delete(
        german
    )

    result = CliRunner().invoke(app, ["templates", "check", "--postmark"])

    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith(f"welcome (user.registered): Postmark template '{german}': ")
    assert "not found" in line
    monkeypatch.setenv("POSTMARK_API_URL", "http://127.0.0.1:1/")
    down = CliRunner().invoke(app, ["templates", "check", "--postmark"])
    assert down.exit_code == 3
    assert "Postmark does not answer" in down.output


@pytest.mark.kafka
async def test_an_email_whose_stream_changed_while_in_doubt_is_found_not_sent_twice(
    db: asyncpg.Connection, database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    """The welcome's answer is lost on `outbound` (the built-in catalogue); the team then
    deploys a catalogue that sends welcomes on `onboarding`. Postmark searches one stream at
    a time: the search must still look where the first attempt went."""
    email = address("moved")
    async with running_stack(
        database_url,
        kafka_bootstrap,
        sandbox,
        postmark_timeout=1.0,
        notifier_lease=2.0,
        notifier_search_settle=60.0,  # this notifier never resends: it only waits
    ) as stack:
        await stack.wait_consuming()
        await register_losing_the_answer(stack, db, email, "Moved", search_delay_ms=3000)
    await asyncio.sleep(3.5)  # the search index has caught up by now
    # The first notifier may have scheduled its wait for the settle window: a minute later.
    await db.execute("UPDATE notifications SET next_attempt_at = now() WHERE recipient = $1", email)

    async with running_stack(database_url, kafka_bootstrap, sandbox, **BRAND) as stack:
        [sent] = await stack.wait_status(email, "sent", within=30)
        messages = await stack.messages(email)

    assert [m["MessageStream"] for m in messages] == ["outbound"]
    assert sent["message_id"] == messages[0]["MessageID"]


@pytest.mark.kafka
async def test_an_email_its_template_cannot_render_is_dead_lettered_and_the_rest_go_on(
    tmp_path: Path,
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
) -> None:
    """A team template that works for "Ada Lovelace" (the check's sample) and fails for
    "Cher": her welcome is given up and dead-lettered as `template-problem`; the emails
    around it, before and after on the same partitions, are sent."""
    folder = tmp_path / "emails"
    shutil.copytree(TEAM, folder)
    (folder / "en" / "welcome.txt").write_text("Dear {{ name.split()[1] }} family\n")
    cher, before, after = address("cher"), address("tmpl-before"), address("tmpl-after")
    async with running_stack(
        database_url, kafka_bootstrap, sandbox, notifier_templates_dir=folder
    ) as stack:
        await stack.wait_consuming()
        for email, name in ((before, "Ada Lovelace"), (cher, "Cher"), (after, "Grace Hopper")):
            await stack.api.post("/v1/users", json={"email": email, "name": name})
        [first] = await stack.wait_messages(before)
        [last] = await stack.wait_messages(after)
        [failed] = await stack.wait_status(cher, "failed")
        letters = await wait_until(
            lambda: dead_letters_for(stack.settings, failed["id"]),
            what="the dead letter",
            within=20,
        )
        assert await stack.messages(cher) == []

    assert "Dear Lovelace family" in first["TextBody"]
    assert "Dear Hopper family" in last["TextBody"]
    assert "cannot be rendered" in failed["last_error"]
    assert "list object has no element 1" in failed["last_error"]
    assert [letter.reason for letter in letters] == ["template-problem"]


async def dead_letters_for(settings: Any, notification_id: str) -> list[Any] | None:
    from notifier.dlq import list_dead_letters

    found = [
        letter
        for letter in await list_dead_letters(settings)
        if letter.headers.get("dlq_notification_id") == notification_id
    ]
    return found or None


@pytest.mark.kafka
async def test_a_postmark_template_missing_at_postmark_is_dead_lettered_then_sent_by_a_replay(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, sandbox: Sandbox
) -> None:
    """The team deploys a catalogue naming a Postmark template before creating it: Postmark
    refuses the email (1101); it is dead-lettered as `template-problem`, not lost, and a
    replay once the template exists sends it, once."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from notifier.dlq import replay
    from postroom.settings import asyncpg_url

    folder, english, _ = postmark_catalogue(tmp_path, sandbox)
    client = PostmarkClient(server_token=POSTMARK_TOKEN, root_api_url=sandbox.url + "/")
    client.templates.delete(english)
    email = address("pm-missing")
    async with running_stack(
        database_url, kafka_bootstrap, sandbox, notifier_templates_dir=folder
    ) as stack:
        await stack.api.post("/v1/users", json={"email": email, "name": "Early"})
        [failed] = await stack.wait_status(email, "failed")
        [letter] = await wait_until(
            lambda: dead_letters_for(stack.settings, failed["id"]),
            what="the dead letter",
            within=20,
        )
        assert letter.reason == "template-problem"
        assert "1101" in failed["last_error"]

        client.templates.create(
            Name=english, Alias=english, Subject="Welcome, {{name}}", TextBody="{{verify_url}}"
        )
        engine = create_async_engine(asyncpg_url(database_url))
        try:
            replayed = await replay(stack.settings, engine, reason="template-problem")
        finally:
            await engine.dispose()
        assert replayed.replayed == 1
        [sent] = await stack.wait_status(email, "sent")
        [message] = await stack.wait_messages(email)
        await asyncio.sleep(0.5)
        assert len(await stack.messages(email)) == 1

    assert sent["id"] == failed["id"]
    assert (message["Subject"], message["TemplateAlias"]) == ("Welcome, Early", english)


@pytest.mark.kafka
async def test_an_email_renamed_while_in_doubt_is_found_sent_not_failed(
    tmp_path: Path,
    db: asyncpg.Connection,
    database_url: str,
    kafka_bootstrap: str,
    sandbox: Sandbox,
) -> None:
    """The welcome's answer is lost; the team then renames the email (`welcome_v2`), so its
    record no longer plans that notification. Postmark holds the message: the notification
    is marked sent, not failed, and nothing is dead-lettered (a replay would send it again)."""
    folder = tmp_path / "emails"
    shutil.copytree(TEAM, folder)
    catalogue = folder / "emails.yaml"
    catalogue.write_text(
        catalogue.read_text().replace(
            "- name: welcome\n", "- name: welcome_v2\n      template: welcome\n"
        )
    )
    email = address("renamed")
    async with running_stack(
        database_url,
        kafka_bootstrap,
        sandbox,
        postmark_timeout=1.0,
        notifier_lease=2.0,
        notifier_search_settle=60.0,
    ) as stack:
        await stack.wait_consuming()
        await register_losing_the_answer(stack, db, email, "Renamed", search_delay_ms=3000)
    await asyncio.sleep(3.5)
    await db.execute("UPDATE notifications SET next_attempt_at = now() WHERE recipient = $1", email)

    async with running_stack(
        database_url, kafka_bootstrap, sandbox, notifier_templates_dir=folder
    ) as stack:
        [sent] = await stack.wait_status(email, "sent", within=30)
        messages = await stack.messages(email)
        letters = await dead_letters_for(stack.settings, sent["id"])

    assert sent["message_id"] == messages[0]["MessageID"]
    assert len(messages) == 1
    assert letters is None
