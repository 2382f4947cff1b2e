"""The body size limit reads Content-Length without trusting it: a value of thousands of
digits (which int() refuses, and which no body could match) is a 413, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from postroom.middleware import BodySizeLimit


async def answer_to(content_length: bytes) -> int:
    reached: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/users",
        "headers": [(b"content-length", content_length)],
    }
    await BodySizeLimit(app, max_bytes=65536)(scope, receive, send)
    return 0 if reached else int(sent[0]["status"])


@pytest.mark.parametrize("length", [b"9" * 5000, b"1" + b"0" * 20, b"65537", b"-1", b"1e3"])
async def test_a_length_past_the_limit_or_not_a_length_is_413(length: bytes) -> None:
    assert await answer_to(length) == 413


async def test_a_length_within_the_limit_reaches_the_app() -> None:
    assert await answer_to(b"65536") == 0
