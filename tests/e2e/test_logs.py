"""What the api writes to its log."""

import httpx

from tests.e2e.conftest import start_api, stop_api


def test_the_access_log_never_shows_a_verification_token(database_url: str) -> None:
    api = start_api(database_url, ACCESS_LOG="true", LOG_LEVEL="info")
    try:
        page = httpx.get(f"{api.base_url}/verify-email", params={"token": "s3cret-token-value"})
        assert page.status_code == 400
    finally:
        stop_api(api)
    log = api.log_path.read_text()
    assert '"route": "/verify-email"' in log
    assert "s3cret-token-value" not in log
