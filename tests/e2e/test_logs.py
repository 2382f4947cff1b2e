"""What the api writes to its log: JSON lines outside development, readable lines in it,
and never a verification token."""

import json

import httpx
import pytest

from tests.support.processes import start_api, stop_api


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
