"""Waiting for an outcome against a deadline, never a bare sleep: a process we started to
answer, or a probe to find what it looks for."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def wait_until_answers(
    url: str, process: subprocess.Popen[bytes], *, name: str, within: float = 30
) -> None:
    """Return once `url` answers 200; fail if the process exits or time runs out."""
    deadline = time.monotonic() + within
    while True:
        assert process.poll() is None, f"the {name} exited during start-up"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the {name} did not answer {url} within {within:.0f} s")
        time.sleep(0.05)


async def wait_until(probe: Callable[[], Awaitable[T | None]], *, what: str, within: float) -> T:
    """Poll `probe` until it returns something truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"waited {within} s for {what}"
        await asyncio.sleep(0.05)


def poll_until(probe: Callable[[], object], *, what: str, within: float) -> None:
    """The blocking `wait_until`, for sync tests watching a process from outside."""
    deadline = time.monotonic() + within
    while not probe():
        assert time.monotonic() < deadline, f"waited {within} s for {what}"
        time.sleep(0.05)


async def ready(service: httpx.AsyncClient) -> bool:
    """Whether the service behind `service` answers `/readyz` with 200 (a probe)."""
    try:
        return (await service.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False  # not listening yet
