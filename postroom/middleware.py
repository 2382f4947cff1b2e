"""Pure ASGI middleware: a request-body size limit and Prometheus request metrics."""

from __future__ import annotations

import time

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postroom.problems import BODY_TOO_LARGE, problem_response

_access = structlog.get_logger("postroom.access")


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with 413: by Content-Length when the client sends one,
    else by reading the (then small) streamed body before the app sees any of it."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                # A length longer than 20 digits is past any body (and int() refuses
                # thousands of digits): refused before it is parsed.
                if not value.isdigit() or len(value) > 20 or int(value) > self.max_bytes:
                    await self._refuse(scope, receive, send)
                else:
                    await self.app(scope, receive, send)
                return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return

        # Chunked: buffer at most max_bytes, then hand the app the same messages.
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            BODY_TOO_LARGE,
            f"The request body must be at most {self.max_bytes} bytes.",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class RequestMetrics:
    """Count requests and time them per route template (never per raw path). Every process
    uses the same names; which process answered is the scrape's `job` (or `instance`)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry,
        access_log: bool,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.requests = Counter(
            "postroom_http_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "postroom_http_request_duration_seconds",
            "Time to answer, by route.",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            # The router records the matched route in the scope it shares with us.
            template = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            elapsed = time.perf_counter() - start
            self.requests.labels(method, template, str(status)).inc()
            self.latency.labels(method, template).observe(elapsed)
            if self.access_log:
                # The route template, never the raw URL: verification links carry tokens.
                _access.info(
                    "request",
                    method=method,
                    route=template,
                    status=status,
                    ms=round(elapsed * 1000, 2),
                )
