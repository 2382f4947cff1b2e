"""Settings of the `api` process."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from postroom.settings import HttpServiceSettings


class ApiSettings(HttpServiceSettings):
    """Settings of the `api` process."""

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    email_token_max_age: int = Field(default=48 * 3600, ge=60, description="seconds")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    idempotency_key_ttl: int = Field(default=24 * 3600, ge=60, description="seconds")
    # What publishes the outbox (docs/debezium.md). `debezium`: the api deletes outbox rows
    # older than OUTBOX_RETENTION whether marked or not, and reports the database's logical
    # replication slots (postroom_outbox_slot_*).
    outbox_publisher: Literal["relay", "debezium"] = "relay"
    slot_report_interval: float = Field(default=15.0, gt=0, description="seconds")
