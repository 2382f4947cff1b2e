"""Every process's `/metrics` carries what an operator watches on any process (its memory
above all: the RSS target is watched in production), and no `_created` twin series."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from notifier.app import create_app as create_notifier
from outbox_relay.app import create_app as create_relay
from tests.support.settings import make_notifier_settings, make_relay_settings


async def scrape(app: FastAPI) -> str:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        answer = await http.get("/metrics")
    assert answer.status_code == 200
    return answer.text


def assert_process_series(text: str) -> None:
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "python_info",
        "python_gc_collections_total",
    ):
        assert name in samples, name
    assert not [name for name in samples if name.endswith("_created")]


async def test_the_api_reports_its_process(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")  # so its request counters have a series
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert "postroom_http_requests_total" in answer.text
    assert_process_series(answer.text)


@pytest.mark.parametrize("process", ["relay", "notifier"])
async def test_the_relay_and_the_notifier_report_their_process(
    process: str, database_url: str
) -> None:
    if process == "relay":
        app = create_relay(make_relay_settings(database_url, "127.0.0.1:9"))
    else:
        settings = make_notifier_settings(
            database_url, "127.0.0.1:9", "http://127.0.0.1:9/", "metrics"
        )
        app = create_notifier(settings, consume=False)
    assert_process_series(await scrape(app))


async def test_the_api_and_the_notifier_count_requests_under_one_name(
    client: httpx.AsyncClient, database_url: str
) -> None:
    settings = make_notifier_settings(database_url, "127.0.0.1:9", "http://127.0.0.1:9/", "names")
    notifier = create_notifier(settings, consume=False)
    transport = httpx.ASGITransport(app=notifier)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/v1/notifications")).status_code == 401
        notifier_text = (await http.get("/metrics")).text
    assert (await client.get("/v1/notifications")).status_code == 404
    api_text = (await client.get("/metrics")).text
    # Which process answered is the scrape's job; the series names are the same.
    for text, route, status in (
        (notifier_text, "/v1/notifications", "401"),
        (api_text, "unmatched", "404"),
    ):
        assert (
            f'postroom_http_requests_total{{method="GET",route="{route}",status="{status}"}} 1.0'
            in text
        )
        assert "postroom_http_request_duration_seconds_bucket" in text
    assert "postroom_api_requests" not in api_text
    assert "postroom_notifier_requests" not in notifier_text
