"""What the processes write to their logs: JSON lines only outside development, whoever logs
(structlog, uvicorn, aiokafka, OpenTelemetry), each with its logger, service and trace id;
readable lines in development; never a verification token."""

import json
import socket
import uuid
from pathlib import Path

import httpx
import pytest

from postroom_cli.embedded import free_port
from tests.support.processes import RelayProcess, start_api, stop_api
from tests.support.settings import API_TOKEN, make_relay_settings
from tests.support.waiting import poll_until


@pytest.mark.parametrize("app_env", ["development", "staging"])
def test_the_access_log_never_shows_a_verification_token(database_url: str, app_env: str) -> None:
    api = start_api(database_url, ACCESS_LOG="true", LOG_LEVEL="info", APP_ENV=app_env)
    try:
        page = httpx.get(f"{api.base_url}/verify-email", params={"token": "s3cret-token-value"})
        assert page.status_code == 400
    finally:
        stop_api(api)
    log = api.log_path.read_text()
    assert "s3cret-token-value" not in log
    access = [line for line in log.splitlines() if "/verify-email" in line]
    assert len(access) == 1
    if app_env == "staging":
        entry = json.loads(access[0])
        assert (entry["event"], entry["route"], entry["status"]) == (
            "request",
            "/verify-email",
            400,
        )
    else:
        assert "route=/verify-email" in access[0]
        assert "status=400" in access[0]


TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def json_lines(log: str) -> list[dict[str, object]]:
    """Every line of a production log, parsed: any line that is not JSON fails the test."""
    entries = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(entry, dict), line
        assert {"event", "level", "timestamp", "logger", "service"} <= entry.keys(), line
        entries.append(entry)
    return entries


def test_a_production_api_log_is_json_lines_only_with_uvicorn_and_trace_ids(
    database_url: str,
) -> None:
    # Tracing on (towards a collector that is not there: whatever the exporter says about
    # that must be JSON too).
    api = start_api(
        database_url,
        APP_ENV="production",
        ACCESS_LOG="true",
        LOG_LEVEL="info",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    try:
        # A request uvicorn cannot parse: uvicorn says so through the standard library.
        host, port = api.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 400")
        traced = httpx.get(
            f"{api.base_url}/v1/users/{uuid.uuid4()}",
            headers={
                "Authorization": f"Bearer {API_TOKEN}",
                "traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01",
            },
        )
        assert traced.status_code == 404
    finally:
        stop_api(api)
    entries = json_lines(api.log_path.read_text())
    assert "uvicorn.error" in {entry["logger"] for entry in entries}
    assert {entry["service"] for entry in entries} == {"postroom-api"}
    [access] = [e for e in entries if e.get("route") == "/v1/users/{user_id}"]
    assert access["logger"] == "postroom.access"
    assert access["trace_id"] == TRACE_ID


def test_a_relay_that_cannot_reach_kafka_logs_aiokafka_in_json(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_relay_settings(database_url, f"127.0.0.1:{free_port()}", app_env="production")
    relay = RelayProcess(settings, log_path=tmp_path / "relay.log")
    relay.start()
    try:
        poll_until(lambda: "aiokafka" in relay.log(), what="aiokafka's complaint", within=30)
    finally:
        relay.stop()
    entries = json_lines(relay.log())
    assert any(str(e["logger"]).startswith("aiokafka") for e in entries)
    assert {entry["service"] for entry in entries} == {"postroom-relay"}
