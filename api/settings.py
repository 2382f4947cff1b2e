"""Settings of the `api` process."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from postroom.settings import BrandSettings, HttpServiceSettings


class ApiSettings(HttpServiceSettings, BrandSettings):
    """Settings of the `api` process."""

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    # Processes serving the api on one port, past one core on one host (docs/operations.md,
    # "Scaling"); each has its own pool of DATABASE_POOL_SIZE connections.
    api_workers: int = Field(default=1, ge=1, le=64)
    email_token_max_age: int = Field(default=48 * 3600, ge=60, description="seconds")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    idempotency_key_ttl: int = Field(default=24 * 3600, ge=60, description="seconds")
    # New verification links a user may ask for: one per interval, so many per day.
    verification_resend_interval: float = Field(default=60.0, ge=0, description="seconds")
    verification_resend_daily: int = Field(default=5, ge=1, le=1000)
    # What publishes the outbox (docs/debezium.md). `debezium`: the api deletes outbox rows
    # older than OUTBOX_RETENTION whether marked or not, and reports the database's logical
    # replication slots (postroom_outbox_slot_*).
    outbox_publisher: Literal["relay", "debezium"] = "relay"
    slot_report_interval: float = Field(default=15.0, gt=0, description="seconds")
