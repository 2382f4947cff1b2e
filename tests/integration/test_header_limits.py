"""Request heads are bounded in every HTTP process: past 32 KiB or 100 header fields the
answer is a 431 problem, before the app runs (real uvicorn, raw sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import uvicorn

from api.app import create_app
from api.settings import ApiSettings
from postroom.http_limits import MAX_HEAD_BYTES, MAX_HEADER_FIELDS, BoundedHeadProtocol
from postroom_cli.embedded import free_port
from tests.support.postmark import Sandbox


@pytest.fixture
async def api_port(api_settings: ApiSettings) -> AsyncIterator[int]:
    """The api under uvicorn with the bounded protocol, as `postroom api` runs it."""
    port = free_port()
    config = uvicorn.Config(
        create_app(api_settings),
        host="127.0.0.1",
        port=port,
        http=BoundedHeadProtocol,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def exchange(port: int, head: bytes, body: bytes = b"", *, chunk: int = 16384) -> bytes:
    """Send a request in chunks and read the whole answer (until the server closes or a
    complete response arrived)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data = head + body
        with contextlib.suppress(ConnectionError):
            for at in range(0, len(data), chunk):
                writer.write(data[at : at + chunk])
                await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 20), timeout=10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def request(path: str, headers: list[tuple[str, str]], *, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_a_huge_header_is_a_431_before_the_app_runs(api_port: int) -> None:
    answer = await exchange(api_port, request("/healthz", [("x-big", "a" * 4_000_000)]))

    status, body = status_and_body(answer)
    assert status == 431
    assert b"content-type: application/problem+json" in answer.lower()
    assert json.loads(body)["type"] == "urn:postroom:problem:request-header-too-large"


async def test_a_head_just_over_the_bound_in_one_piece_is_a_431(api_port: int) -> None:
    head = request("/healthz", [("x-big", "a" * MAX_HEAD_BYTES)])
    status, _ = status_and_body(await exchange(api_port, head, chunk=len(head)))
    assert status == 431


async def test_too_many_header_fields_are_a_431(api_port: int) -> None:
    many = [(f"x-h{n}", "1") for n in range(MAX_HEADER_FIELDS + 1)]
    status, _ = status_and_body(await exchange(api_port, request("/healthz", many)))
    assert status == 431


async def test_heads_within_the_bounds_and_large_bodies_pass(api_port: int) -> None:
    fine = [("x-pad", "a" * 20_000), *((f"x-h{n}", "1") for n in range(50))]
    ok, _ = status_and_body(await exchange(api_port, request("/healthz", fine)))
    body = b'{"email": "big@example.com", "name": "' + b"x" * 300_000 + b'"}'
    post = request(
        "/v1/users",
        [("content-type", "application/json"), ("content-length", str(len(body)))],
        method="POST",
    )
    refused, _ = status_and_body(await exchange(api_port, post, body))
    assert ok == 200
    assert refused in (401, 413, 422)  # judged by the app, not by the head bound


async def test_processes_started_by_the_command_bound_heads_too(sandbox: Sandbox) -> None:
    port = urlsplit(sandbox.url).port
    assert port is not None
    status, _ = status_and_body(
        await exchange(port, request("/healthz", [("x-big", "a" * 100_000)]))
    )
    assert status == 431


async def test_a_refused_head_with_a_body_in_the_same_packet_logs_no_error(
    api_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    many = [(f"x-h{n}", "1") for n in range(MAX_HEADER_FIELDS + 1)]
    head = request("/v1/users", [*many, ("content-length", "2")], method="POST")

    status, _ = status_and_body(await exchange(api_port, head + b"{}", chunk=1 << 20))

    assert status == 431
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
