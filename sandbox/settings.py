"""Settings of the `sandbox` process: where it listens, what it accepts, where webhooks go."""

from __future__ import annotations

from pydantic import Field, SecretStr

from postroom.settings import EmailSettings

# Postmark's own test token: requests are validated, nothing is captured or delivered.
TEST_TOKEN = "POSTMARK_API_TEST"  # noqa: S105 - public, documented by Postmark


class SandboxSettings(EmailSettings):
    """Settings of the `sandbox` process (it reads no database). The emails' settings are
    the notifier's, read for the dev inbox's Templates page."""

    sandbox_host: str = "127.0.0.1"
    sandbox_port: int = Field(default=8025, ge=1, le=65535)
    postmark_server_token: SecretStr = SecretStr("dev-only-postmark-token")
    # Empty: bounces and complaints are still recorded, but no webhook is posted.
    sandbox_webhook_url: str = ""
    webhook_username: str = ""
    webhook_password: SecretStr = SecretStr("")
    sandbox_delivery_webhooks: bool = False
    # Real bounces arrive seconds after the send; a short pause keeps that order here too.
    sandbox_webhook_delay_ms: int = Field(default=250, ge=0, le=600_000)
    sandbox_max_messages: int = Field(default=10_000, ge=1, le=1_000_000)
    sandbox_fault_seed: int | None = None
