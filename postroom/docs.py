"""The interactive API documentation every Postroom HTTP process serves: Swagger UI at `/docs`
and ReDoc at `/redoc`, with their scripts and styles from the `fastapi-offline` package
instead of a CDN, so they work on a machine without network. Each page carries a
Content-Security-Policy that allows its own origin's files and, on `/docs`, the one inline
script that starts Swagger UI (by its hash), and nothing else."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse, Response

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
# The package's version is part of the path, so the files can be cached for good: a new
# version is a new URL.
ASSETS_PATH = f"/docs/assets/{version('fastapi-offline')}"
ASSETS_CACHE = "public, max-age=31536000, immutable"

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_SHARED_POLICY = (
    "default-src 'none'; connect-src 'self'; img-src 'self' data:; font-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class _Assets(StaticFiles):
    """The package's files, cached for a year by browsers and proxies."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = ASSETS_CACHE
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _with_policy(
    page: HTMLResponse, *, script_src: str, style_src: str, extra: str = ""
) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = (
        f"{_SHARED_POLICY}; script-src {script_src}; style-src {style_src}{extra}"
    )
    page.headers["X-Content-Type-Options"] = "nosniff"
    page.headers["Referrer-Policy"] = "no-referrer"
    return page


def swagger_page(title: str, root: str, openapi_url: str) -> HTMLResponse:
    """Swagger UI for the document at `openapi_url`, under `root` (a proxy's prefix)."""
    page = get_swagger_ui_html(
        openapi_url=root + openapi_url,
        title=f"{title} - Swagger UI",
        oauth2_redirect_url=None,  # no OAuth2 here: bearer tokens and basic auth only
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
    )
    # The inline script that starts Swagger UI names the document's URL, so its hash is
    # taken from the page as built.
    scripts = _INLINE_SCRIPT.findall(bytes(page.body).decode())
    hashes = " ".join(_sha256(script) for script in scripts)
    return _with_policy(page, script_src=f"'self' {hashes}", style_src="'self'")


def redoc_page(title: str, root: str, openapi_url: str) -> HTMLResponse:
    """ReDoc for the document at `openapi_url`, under `root`."""
    page = get_redoc_html(
        openapi_url=root + openapi_url,
        title=f"{title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        with_google_fonts=False,
    )
    # ReDoc styles itself by adding <style> elements as it renders (styled-components),
    # which no hash can name, and searches in a worker it makes from a blob: its scripts
    # stay this origin's file.
    return _with_policy(
        page,
        script_src="'self'",
        style_src="'self' 'unsafe-inline'",
        extra="; worker-src blob:",
    )


def create_fastapi(**kwargs: Any) -> FastAPI:
    """`FastAPI(**kwargs)`, its `/docs` and `/redoc` served offline (see the module)."""
    app = FastAPI(docs_url=None, redoc_url=None, **kwargs)
    openapi_url = app.openapi_url
    assert openapi_url is not None
    app.mount(ASSETS_PATH, _Assets(directory=ASSETS_DIR), name="docs-assets")

    @app.api_route(DOCS_PATH, methods=["GET", "HEAD"], include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return swagger_page(app.title, request.scope.get("root_path", ""), openapi_url)

    @app.api_route(REDOC_PATH, methods=["GET", "HEAD"], include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return redoc_page(app.title, request.scope.get("root_path", ""), openapi_url)

    # For the Allow header of a 405 (postroom.web.include_routers adds the routers' routes).
    app.state.route_methods = [
        (re.compile(f"^{re.escape(openapi_url)}$"), frozenset({"GET"})),
        (
            re.compile(f"^({re.escape(DOCS_PATH)}|{re.escape(REDOC_PATH)})$"),
            frozenset({"GET", "HEAD"}),
        ),
        (re.compile(f"^{re.escape(ASSETS_PATH)}/"), frozenset({"GET", "HEAD"})),
    ]
    return app
