"""The pages people see, in a real (headless) Chromium: the verification page a link opens,
on a phone (375 px) and a desktop (1280 px), and the dev inbox's Templates page. Nothing on
them comes from another site. Screenshots are kept under `.artifacts/`."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from postroom.tokens import issue_token
from postroom_cli.embedded import free_port
from tests.e2e.test_inbox_browser import ARTIFACTS, CHROMIUM, FLAGS
from tests.support.processes import LiveApi, start_api, stop_api, wait_until_answers
from tests.support.settings import API_TOKEN, EMAIL_SECRET, POSTMARK_TOKEN

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
TEAM = Path(__file__).parents[1] / "fixtures" / "team_emails"
WIDTHS = (375, 1280)


@pytest.fixture
def branded_api(database_url: str) -> Iterator[LiveApi]:
    api = start_api(database_url, BRAND_NAME="Acme", BRAND_SUPPORT_EMAIL="help@acme.test")
    try:
        yield api
    finally:
        stop_api(api)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Browser, url: str, width: int, origin: str) -> tuple[Page, list[str]]:
    """`url` in a fresh page `width` px wide; the URLs of every request the page made to
    anywhere but `origin`."""
    page = await browser.new_page(viewport={"width": width, "height": 800})
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda request: (
            None
            if request.url.startswith((origin, "about:", "data:"))
            else elsewhere.append(request.url)
        ),
    )
    await page.goto(url)
    return page, elsewhere


async def fits(page: Page) -> bool:
    """Nothing sticks out sideways: no horizontal scrolling."""
    return bool(
        await page.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
    )


async def register(api: LiveApi, email: str) -> str:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:
        created = await http.post(f"{api.base_url}/v1/users", json={"email": email, "name": "Ada"})
        assert created.status_code == 201
        user_id: str = created.json()["id"]
        return user_id


@pytest.mark.parametrize("width", WIDTHS)
async def test_the_verification_page_is_branded_styled_and_readable(
    branded_api: LiveApi, width: int
) -> None:
    email = f"ada.lovelace.with.a.long.address.{width}@example.com"
    user_id = await register(branded_api, email)
    token = issue_token(EMAIL_SECRET, user_id=uuid.UUID(user_id), email=email)
    ARTIFACTS.mkdir(exist_ok=True)
    async with chromium() as browser:
        page, elsewhere = await open_page(
            browser,
            f"{branded_api.base_url}/verify-email?token={token}",
            width,
            branded_api.base_url,
        )
        await page.screenshot(path=ARTIFACTS / f"verify-page-{width}.png", full_page=True)
        assert await page.locator(".brand").inner_text() == "Acme"
        assert "help@acme.test" in await page.locator("footer").inner_text()
        button = page.get_by_role("button", name=f"Verify {email}")
        # The stylesheet the api serves is applied: the button is the brand's blue, and
        # a thumb's height on a phone.
        style = await button.evaluate(
            "b => [getComputedStyle(b).backgroundColor, b.getBoundingClientRect().height]"
        )
        assert style[0] == "rgb(43, 108, 176)"
        assert style[1] >= 44
        assert await fits(page)
        box = await button.bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= width

        await button.click()
        await page.wait_for_load_state()
        await page.screenshot(path=ARTIFACTS / f"verified-page-{width}.png", full_page=True)
        assert await page.locator("h1").inner_text() == "Email verified"
        assert await fits(page)
        assert elsewhere == []


async def test_an_expired_links_page_sends_a_new_link_on_a_phone(branded_api: LiveApi) -> None:
    email = "grace@example.com"
    user_id = await register(branded_api, email)
    old = issue_token(
        EMAIL_SECRET,
        user_id=uuid.UUID(user_id),
        email=email,
        issued_at=datetime.now(UTC) - timedelta(days=3),
    )
    async with chromium() as browser:
        page, elsewhere = await open_page(
            browser, f"{branded_api.base_url}/verify-email?token={old}", 375, branded_api.base_url
        )
        await page.screenshot(path=ARTIFACTS / "expired-page-375.png", full_page=True)
        assert await page.locator("h1").inner_text() == "Link expired"
        await page.get_by_role("button", name="Send me a new link").click()
        await page.wait_for_load_state()
        await page.screenshot(path=ARTIFACTS / "new-link-page-375.png", full_page=True)
        assert await page.locator("h1").inner_text() == "A new link is on its way"
        assert email in await page.locator("main").inner_text()
        assert await fits(page)
        assert elsewhere == []


@pytest.fixture
def team_sandbox() -> Iterator[str]:
    """A sandbox whose Templates page shows the team's folder."""
    port = free_port()
    env = {
        **os.environ,
        "SANDBOX_HOST": "127.0.0.1",
        "SANDBOX_PORT": str(port),
        "POSTMARK_SERVER_TOKEN": POSTMARK_TOKEN,
        "NOTIFIER_TEMPLATES_DIR": str(TEAM),
        "BRAND_NAME": "Acme",
        "LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([sys.executable, "-m", "sandbox"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/healthz", process, name="sandbox")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_the_templates_page_shows_every_email_per_locale(team_sandbox: str) -> None:
    async with chromium() as browser:
        page, elsewhere = await open_page(browser, f"{team_sandbox}/", 1280, team_sandbox)
        await page.get_by_role("link", name="Templates").click()
        await page.wait_for_load_state()
        headings = await page.locator("h2").all_inner_texts()
        assert [heading.split(" ")[0] for heading in headings] == [
            "welcome",
            "email_change_notice",
            "security_notice",
            "verify_new_email",
            "verify_email",
            "goodbye",
        ]
        assert "Ada Lovelace, welcome to Acme" in await page.locator("main").inner_text()
        # Each email's HTML part, rendered, beside its text part.
        frames = page.locator("iframe")
        assert await frames.count() == 6
        welcome = page.frame_locator("iframe").first
        assert "Thanks for signing up" in await welcome.locator("body").inner_text()

        await page.get_by_role("link", name="de", exact=True).click()
        await page.wait_for_load_state()
        bodies = []
        for at in range(await frames.count()):
            await frames.nth(at).scroll_into_view_if_needed()
            bodies.append(await page.frame_locator("iframe").nth(at).locator("body").inner_text())
        assert all("Acme" in body for body in bodies)
        assert "Auf Wiedersehen, Ada Lovelace" in bodies[-1]
        # A viewport as tall as the page: Chromium paints a frame only inside the viewport.
        height = await page.evaluate("document.documentElement.scrollHeight")
        await page.set_viewport_size({"width": 1280, "height": height})
        await page.screenshot(path=ARTIFACTS / "templates-page-de-1280.png")
        text = await page.locator("main").inner_text()
        assert "Ada Lovelace, willkommen bei Acme" in text
        assert "Sicherheitshinweis: Ihre Adresse bei Acme wurde geändert" in text
        assert elsewhere == []
