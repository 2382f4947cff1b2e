"""Each process's API documentation, `/docs` (Swagger UI) and `/redoc`, in a real (headless)
Chromium with the network off: every request to anywhere but the process itself is aborted,
and the operations still render, under the page's Content-Security-Policy with nothing
refused. Screenshots are kept under `.artifacts/`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.async_api import Page, Request, Route

from postroom_cli.embedded import free_port
from tests.e2e.test_inbox_browser import ARTIFACTS, CHROMIUM
from tests.e2e.test_pages_browser import chromium
from tests.support.postmark import Sandbox
from tests.support.processes import NotifierProcess, RelayProcess, start_api, stop_api
from tests.support.settings import make_notifier_settings, make_relay_settings
from tests.support.waiting import wait_until_answers

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
# The docs need no broker: the notifier and the relay serve them while they look for one.
NO_BROKER = "127.0.0.1:9"
REDOCLY_LOGO = "Loading the image 'https://cdn.redoc.ly/"


@dataclass(frozen=True)
class Documented:
    """A running process and what its documentation must show: an operation's method, path
    and summary."""

    name: str
    url: str
    method: str
    path: str
    summary: str


@pytest.fixture
def processes(database_url: str, sandbox: Sandbox) -> Iterator[list[Documented]]:
    api = start_api(database_url)
    notifier = NotifierProcess(
        make_notifier_settings(
            database_url, NO_BROKER, sandbox.url, "t-docs", notifier_port=free_port()
        )
    )
    relay = RelayProcess(
        make_relay_settings(database_url, NO_BROKER, relay_metrics_port=free_port())
    )
    relay_url = f"http://127.0.0.1:{relay.settings.relay_metrics_port}"
    try:
        for process, url in ((notifier, notifier.url), (relay, relay_url)):
            process.start()
            assert process.process is not None
            wait_until_answers(f"{url}/healthz", process.process, name=process.command)
        yield [
            Documented("api", api.base_url, "POST", "/v1/users", "Create User"),
            Documented(
                "notifier",
                notifier.url,
                "POST",
                "/webhooks/postmark",
                "Receive Postmark Webhook",
            ),
            Documented("relay", relay_url, "GET", "/readyz", "Readyz"),
            Documented("sandbox", sandbox.url, "POST", "/email", "Send Email"),
        ]
    finally:
        for process in (notifier, relay):
            if process.alive:
                process.stop()
        stop_api(api)


@dataclass
class Offline:
    """What a page asked of the network it does not have, and what its policy refused."""

    aborted: list[str]
    refused: list[str]


async def offline(page: Page, origin: str) -> Offline:
    """Cut `page` off from everything but `origin`; record what it tried and was refused."""
    seen = Offline([], [])

    async def only_origin(route: Route, request: Request) -> None:
        if request.url.startswith(origin + "/"):
            await route.continue_()
        else:
            seen.aborted.append(request.url)
            await route.abort("internetdisconnected")

    await page.route("**/*", only_origin)
    page.on(
        "console",
        lambda message: (
            seen.refused.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return seen


async def test_the_docs_of_every_process_render_with_the_network_off(
    processes: list[Documented],
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    async with chromium() as browser:
        for process in processes:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            seen = await offline(page, process.url)

            answer = await page.goto(f"{process.url}/docs")
            assert answer is not None
            assert answer.status == 200
            operation = page.locator(f".opblock-{process.method.lower()}").filter(
                has=page.locator(f'.opblock-summary-path[data-path="{process.path}"]')
            )
            await operation.first.wait_for(timeout=15_000)
            assert "script-src 'self' 'sha256-" in answer.headers["content-security-policy"]
            await page.screenshot(path=ARTIFACTS / f"docs-{process.name}.png", full_page=True)
            # Opening an operation shows its responses: the document was read, not just named.
            await operation.first.locator(".opblock-summary").click()
            await page.locator(".responses-table").first.wait_for(timeout=5_000)
            await page.screenshot(path=ARTIFACTS / f"docs-{process.name}-open.png")
            assert (seen.aborted, seen.refused) == ([], []), process.name

            answer = await page.goto(f"{process.url}/redoc")
            assert answer is not None
            assert answer.status == 200
            heading = page.locator("h2", has_text=process.summary)
            await heading.first.wait_for(timeout=15_000)
            await page.screenshot(path=ARTIFACTS / f"redoc-{process.name}.png")
            assert seen.aborted == [], process.name
            # The one thing refused: the "API docs by Redocly" badge's logo, from Redocly's
            # site; its words stay. Every script, style and worker of the page is allowed.
            assert [REDOCLY_LOGO in text for text in seen.refused] == [True], seen.refused
            await page.close()
