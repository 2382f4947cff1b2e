"""API_WORKERS: the api past one core on one host. Several processes serve one port, each
writes users and their events as one, each logs as the single process does, and SIGTERM stops
them all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import asyncpg
import httpx
import psutil

from tests.support.postgres import run_async
from tests.support.processes import start_api, stop_api
from tests.support.settings import API_TOKEN
from tests.support.waiting import poll_until


def test_two_workers_serve_one_port_replace_a_dead_one_and_stop_together(
    database_url: str,
) -> None:
    api = start_api(
        database_url, API_WORKERS="2", APP_ENV="staging", LOG_LEVEL="info", ACCESS_LOG="true"
    )
    try:
        parent = psutil.Process(api.process.pid)

        def workers() -> set[int]:
            found = set()
            for child in parent.children():
                with contextlib.suppress(psutil.Error):  # a dead one is a zombie for a while
                    if "spawn_main" in " ".join(child.cmdline()):
                        found.add(child.pid)
            return found

        poll_until(lambda: len(workers()) == 2, what="two worker processes", within=30)
        assert run_async(lambda: register(api.base_url, 60)) == [201] * 60
        assert run_async(lambda: counts(database_url)) == (60, 60)

        # A worker that dies is replaced; the port answers throughout.
        first = workers()
        psutil.Process(min(first)).kill()
        poll_until(
            lambda: len(workers()) == 2 and workers() != first,
            what="a new worker in place of the dead one",
            within=30,
        )
        assert run_async(lambda: register(api.base_url, 20)) == [201] * 20
        assert run_async(lambda: counts(database_url)) == (80, 80)
        pids = workers()
    finally:
        stop_api(api)
    assert api.process.returncode == 0
    assert not any(psutil.pid_exists(pid) for pid in pids)
    # The workers log JSON lines, as one process does: every request's access line.
    lines = [json.loads(line) for line in api.log_path.read_text().splitlines() if line.strip()]
    assert all(entry["service"] == "postroom-api" for entry in lines)
    posts = [e for e in lines if e.get("event") == "request" and e.get("route") == "/v1/users"]
    assert len(posts) == 80


async def register(base_url: str, count: int) -> list[int]:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}

    # A connection per request, so the kernel hands them to either worker.
    async def one(n: int) -> int:
        async with httpx.AsyncClient(base_url=base_url, headers=headers) as http:
            body = {"email": f"w{n}-{uuid.uuid4().hex[:8]}@example.com", "name": "W"}
            return (await http.post("/v1/users", json=body)).status_code

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def counts(database_url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(database_url)
    try:
        users = await conn.fetchval("SELECT count(*) FROM users WHERE name = 'W'")
        events = await conn.fetchval(
            "SELECT count(*) FROM outbox AS o JOIN users AS u "
            "ON o.aggregate_id = u.id::text WHERE u.name = 'W'"
        )
        return int(users), int(events)
    finally:
        await conn.close()
