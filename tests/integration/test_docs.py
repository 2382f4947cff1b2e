"""The documentation pages' own files: served by each process with their media type and a
cache of a year, and a page policy that allows the one inline script `/docs` runs (by its
hash) and no other. The browser's view is in tests/e2e/test_docs_browser.py."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest
from fastapi import FastAPI

from postroom.docs import ASSETS_PATH
from sandbox.app import create_app as create_sandbox
from tests.integration.test_openapi import build

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}


def client(app: FastAPI) -> httpx.AsyncClient:
    # A loopback name: the sandbox answers to no other by default.
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost")


@pytest.fixture(params=["api", "notifier", "relay", "sandbox"])
def app(request: pytest.FixtureRequest) -> FastAPI:
    return create_sandbox() if request.param == "sandbox" else build(request.param)


async def test_the_pages_name_only_files_of_their_own_and_those_are_served(app: FastAPI) -> None:
    async with client(app) as http:
        for page in ("/docs", "/redoc"):
            html = (await http.get(page)).text
            named = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert named, page
            assert all(url.startswith(ASSETS_PATH + "/") for url in named), named
        for name, media_type in ASSETS.items():
            answer = await http.get(f"{ASSETS_PATH}/{name}")
            assert answer.status_code == 200
            assert answer.headers["content-type"] == media_type
            assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert answer.headers["x-content-type-options"] == "nosniff"


async def test_the_docs_page_allows_its_own_inline_script_and_nothing_else() -> None:
    async with client(build("api")) as http:
        answer = await http.get("/docs")
    policy = dict(
        part.strip().split(" ", 1) for part in answer.headers["content-security-policy"].split(";")
    )
    [script] = re.findall(r"<script>(.*?)</script>", answer.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert policy["script-src"] == f"'self' 'sha256-{digest}'"
    assert policy["default-src"] == "'none'"
    assert policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"


async def test_a_wrong_method_on_the_docs_names_the_one_allowed() -> None:
    async with client(build("api")) as http:
        for path in ("/docs", "/openapi.json", f"{ASSETS_PATH}/swagger-ui.css"):
            answer = await http.post(path)
            assert answer.status_code == 405
            assert "GET" in answer.headers["allow"].split(", "), path


async def test_uptime_checks_that_ask_with_head_get_the_answer_a_get_gets(app: FastAPI) -> None:
    async with client(app) as http:
        for path in ("/healthz", "/docs", "/redoc"):
            head = await http.head(path)
            assert head.status_code == 200, (app.title, path)
            assert head.headers["content-type"] == (await http.get(path)).headers["content-type"]
