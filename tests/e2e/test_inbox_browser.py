"""A person's path through `make dev`, in a real (headless) Chromium: register through the
api, find the welcome email in the dev inbox, open it, follow its link, see the address
verified. A screenshot of each step is kept under `.artifacts/`."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright

from tests.support.dev import DevStack, dev_ports

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
