"""The dev inbox in a real (headless) Chromium. A person's path through `make dev`: register
through the api, find the welcome email in the dev inbox, open it, follow its link, see the
address verified. And the inbox's own tools on a sandbox of their own: search by recipient,
subject and tag, the raw view, deleting one message, clearing them all. A screenshot of each
step is kept under `.artifacts/`."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, async_playwright

from tests.support.dev import DevStack, dev_ports
from tests.support.names import address, unique
from tests.support.postmark import Sandbox
from tests.support.settings import POSTMARK_TOKEN

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The closed network refuses Chromium's background connections; keep it to the page.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt install chromium)")
async def test_the_welcome_email_in_the_dev_inbox_verifies_the_address(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    ARTIFACTS.mkdir(exist_ok=True)
    ports = dev_ports()
    base = f"http://127.0.0.1:{ports['API_PORT']}"
    inbox = f"http://127.0.0.1:{ports['SANDBOX_PORT']}"
    stack = DevStack(tmp_path, ports)
    try:
        token = stack.wait_for(r"^\s+token\s+(\S+)")[1]
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(headers=auth) as http:
            created = await http.post(
                f"{base}/v1/users", json={"email": "lin@example.com", "name": "Lin"}
            )
            user_id = created.json()["id"]

            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                try:
                    page = await browser.new_page()
                    # The inbox refreshes itself; wait for the welcome email to be listed.
                    await page.goto(inbox)
                    row = page.get_by_role("link", name="Welcome to Postroom", exact=False)
                    for _ in range(60):
                        if await row.count():
                            break
                        await page.wait_for_timeout(500)
                        await page.reload()
                    assert await row.count() == 1, await page.content()
                    await page.screenshot(path=ARTIFACTS / "1-inbox.png", full_page=True)

                    await row.first.click()
                    await page.wait_for_load_state()
                    assert "lin@example.com" in await page.content()
                    await page.screenshot(path=ARTIFACTS / "2-message.png", full_page=True)

                    link = page.locator("a[href*='/verify-email?token=']").first
                    await link.click()
                    await page.wait_for_load_state()
                    # The link opens a page that only asks; its button verifies.
                    button = page.get_by_role("button", name="Verify lin@example.com")
                    await button.wait_for()
                    await page.screenshot(path=ARTIFACTS / "3-confirm.png", full_page=True)
                    await button.click()
                    await page.get_by_text("is now verified").wait_for()
                    assert page.url.startswith(f"{base}/verify-email")
                    await page.screenshot(path=ARTIFACTS / "4-verified.png", full_page=True)
                finally:
                    await browser.close()

            user = (await http.get(f"{base}/v1/users/{user_id}")).json()
            assert user["email_verified"] is True
    finally:
        assert stack.stop() == 0
    assert (ARTIFACTS / "4-verified.png").stat().st_size > 0


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield launched
        finally:
            await launched.close()


async def send(sandbox: Sandbox, to: str, **fields: Any) -> str:
    """Send through the sandbox's Postmark API, as the notifier does; the MessageID."""
    message = {"From": "Postroom <hello@example.com>", "To": to, "TextBody": "Hello", **fields}
    async with httpx.AsyncClient(timeout=10) as http:
        sent = await http.post(
            f"{sandbox.url}/email",
            json=message,
            headers={"X-Postmark-Server-Token": POSTMARK_TOKEN},
        )
    assert sent.json()["ErrorCode"] == 0, sent.text
    message_id: str = sent.json()["MessageID"]
    return message_id


async def follow(page: Page, target: Locator) -> None:
    """Click a link or a form's button and wait for the page it leads to."""
    async with page.expect_navigation():
        await target.click()


async def listed_subjects(page: Page) -> list[str]:
    return await page.locator("tbody tr td:nth-child(4)").all_inner_texts()


async def search_for(page: Page, text: str) -> None:
    await page.get_by_role("searchbox", name="Search").fill(text)
    await follow(page, page.get_by_role("button", name="Search"))


async def test_the_inbox_is_searched_by_recipient_subject_and_tag(
    browser: Browser, sandbox: Sandbox
) -> None:
    word = unique("lighthouse")
    grace = address("grace")
    await send(sandbox, f"Grace Hopper <{grace}>", Subject="Your invoice", Tag="billing")
    await send(sandbox, address("alan"), Subject=f"Tour of the {word}", Tag="tours")
    await send(sandbox, address("alan"), Subject="Weekly digest", Tag=f"digest-{word}")
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(sandbox.url)

    await search_for(page, grace.upper())
    assert await listed_subjects(page) == ["Your invoice"]
    assert f"q={grace.upper()}".replace("@", "%40") in page.url  # a URL to share
    await page.screenshot(path=ARTIFACTS / "inbox-search-recipient.png", full_page=True)

    await search_for(page, f"TOUR OF THE {word}")
    assert await listed_subjects(page) == [f"Tour of the {word}"]
    await page.screenshot(path=ARTIFACTS / "inbox-search-subject.png", full_page=True)

    await search_for(page, f"digest-{word}")
    assert await listed_subjects(page) == ["Weekly digest"]
    # A message's tag is a link to every message with that tag.
    await follow(page, page.get_by_role("link", name=f"digest-{word}"))
    assert "tag=digest-" in page.url
    assert await listed_subjects(page) == ["Weekly digest"]
    await page.screenshot(path=ARTIFACTS / "inbox-search-tag.png", full_page=True)

    await search_for(page, unique("nowhere"))
    assert await listed_subjects(page) == []
    await page.get_by_text("No messages match.").wait_for()
    await page.screenshot(path=ARTIFACTS / "inbox-search-none.png", full_page=True)


async def test_a_message_is_deleted_from_its_page(browser: Browser, sandbox: Sandbox) -> None:
    word = unique("delete")
    await send(sandbox, address("keep"), Subject=f"Keep me {word}")
    await send(sandbox, address("drop"), Subject=f"Delete me {word}")
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(f"{sandbox.url}/?q={word}")
    await follow(page, page.get_by_role("link", name=f"Delete me {word}"))
    await page.screenshot(path=ARTIFACTS / "inbox-delete-1-message.png", full_page=True)

    await follow(page, page.get_by_role("button", name="Delete"))

    assert page.url == f"{sandbox.url}/"  # back in the inbox
    await search_for(page, word)
    assert await listed_subjects(page) == [f"Keep me {word}"]
    await page.screenshot(path=ARTIFACTS / "inbox-delete-2-gone.png", full_page=True)


async def test_clearing_the_inbox_asks_first_then_empties_it(
    browser: Browser, sandbox: Sandbox
) -> None:
    for n in range(3):
        await send(sandbox, address("clear"), Subject=f"Message {n}")
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(sandbox.url)

    await follow(page, page.get_by_role("link", name="Clear all"))
    await page.get_by_role("heading", name="Clear the inbox?").wait_for()
    await page.screenshot(path=ARTIFACTS / "inbox-clear-1-confirm.png", full_page=True)
    await follow(page, page.get_by_role("link", name="Cancel"))
    assert len(await listed_subjects(page)) >= 3  # asking deleted nothing

    await follow(page, page.get_by_role("link", name="Clear all"))
    await follow(page, page.get_by_role("button", name="Delete all messages"))

    assert page.url == f"{sandbox.url}/"
    assert await listed_subjects(page) == []
    await page.get_by_text("No messages yet.").wait_for()
    await page.screenshot(path=ARTIFACTS / "inbox-clear-2-empty.png", full_page=True)


async def test_the_raw_view_shows_every_header_the_metadata_and_both_parts(
    browser: Browser, sandbox: Sandbox
) -> None:
    to, cc, bcc = address("raw-to"), address("raw-cc"), address("raw-bcc")
    subject = f"<script>alert('subject')</script> Raw {unique('raw')}"
    html = '<p>Hello <b>Ada</b></p><script>alert("html")</script>'
    await send(
        sandbox,
        to,
        Cc=cc,
        Bcc=bcc,
        ReplyTo="help@example.com",
        Subject=subject,
        Tag="welcome",
        Metadata={"notification_id": "n-42"},
        Headers=[{"Name": "X-Campaign", "Value": "spring"}],
        HtmlBody=html,
        TextBody="Hello Ada,\nwelcome.",
    )
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await page.goto(sandbox.url)
    await search_for(page, subject)
    # The subject's markup is text everywhere: in the list, on the message, in the raw view.
    assert await listed_subjects(page) == [subject]
    await follow(page, page.get_by_role("link", name=subject))
    assert await page.locator("h1").inner_text() == subject

    await follow(page, page.get_by_role("link", name="Raw"))

    headers = (await page.locator("#headers").inner_text()).splitlines()
    for line in [
        "From: Postroom <hello@example.com>",
        f"To: {to}",
        f"Cc: {cc}",
        f"Bcc: {bcc}",
        "ReplyTo: help@example.com",
        f"Subject: {subject}",
        "Tag: welcome",
        "MessageStream: outbound",
        "Metadata[notification_id]: n-42",
        "X-Campaign: spring",
    ]:
        assert line in headers
    assert headers[0].startswith("MessageID: ")
    assert await page.locator("#text-part").inner_text() == "Hello Ada,\nwelcome."
    assert await page.locator("#html-part").inner_text() == html  # the source, as text
    assert dialogs == []  # no script ran, whatever the message carried
    await page.screenshot(path=ARTIFACTS / "inbox-raw.png", full_page=True)
