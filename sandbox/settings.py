"""Settings of the `sandbox` process: where it listens, what it accepts, where webhooks go."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from postroom.settings import EmailSettings, split_commas

# Postmark's own test token: requests are validated, nothing is captured or delivered.
TEST_TOKEN = "POSTMARK_API_TEST"  # noqa: S105 - public, documented by Postmark
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
# A host name or IP literal without a port, or `*` (any), or `*.domain` (its subdomains).
_HOST_PATTERN = re.compile(r"\*|(\*\.)?[a-z0-9_.-]+|\[[0-9a-f:.]+\]")


class SandboxSettings(EmailSettings):
    """Settings of the `sandbox` process (it reads no database). The emails' settings are
    the notifier's, read for the dev inbox's Templates page."""

    sandbox_host: str = "127.0.0.1"
    sandbox_port: int = Field(default=8025, ge=1, le=65535)
    # The names the sandbox answers to, any port: a page of another name that resolves to the
    # sandbox (DNS rebinding) is refused, or it could read every captured verification link.
    sandbox_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = LOOPBACK_NAMES
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

    @field_validator("sandbox_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        hosts = split_commas(value)
        if isinstance(hosts, tuple):
            hosts = tuple(host.lower() for host in hosts)
            if not hosts:
                raise ValueError("name at least one host (or * for any)")
            for host in hosts:
                if not _HOST_PATTERN.fullmatch(host):
                    raise ValueError(
                        f"{host!r} is not a host name without a port (any port is allowed)"
                    )
        return hosts
