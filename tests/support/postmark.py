"""The project's Postmark sandbox as tests use it: the handle of the run's sandbox, a client
of its inspection API, what it captured and its counters."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Sandbox:
    """The sandbox the `sandbox` fixture started, one for the run."""

    url: str
    process: subprocess.Popen[bytes]


@asynccontextmanager
async def sandbox_client(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the sandbox: `/email` as Postmark, `/api/...` to inspect and inject faults."""
    async with httpx.AsyncClient(base_url=sandbox.url, timeout=10) as client:
        yield client


async def captured(sandbox: httpx.AsyncClient, to: str) -> list[dict[str, Any]]:
    """The messages the sandbox accepted for `to`."""
    answer = await sandbox.get("/api/messages", params={"to": to})
    answer.raise_for_status()
    found: list[dict[str, Any]] = answer.json()
    return found


async def sandbox_stats(sandbox: httpx.AsyncClient) -> dict[str, Any]:
    """The sandbox's counters: calls, injected errors, batch sizes."""
    answer = await sandbox.get("/api/stats")
    answer.raise_for_status()
    stats: dict[str, Any] = answer.json()
    return stats
