"""Settings of the `relay` process."""

from __future__ import annotations

from pydantic import Field

from postroom.settings import KafkaSettings


class RelaySettings(KafkaSettings):
    """Settings of the `relay` process."""

    relay_id: str = Field(default="", description="defaults to host-pid")
    relay_batch_size: int = Field(default=1000, ge=1, le=10_000)
    # One producer request per partition per cycle keeps a failed send from being overtaken
    # by a later one; the cycle is trimmed to this many bytes of record values to fit.
    relay_batch_bytes: int = Field(default=512 * 1024, ge=16 * 1024)
    relay_max_record_bytes: int = Field(default=1024 * 1024, ge=1024)
    relay_poll_interval: float = Field(default=1.0, gt=0, description="seconds")
    # A cycle starts at most this long after the one before it started, unless that one was
    # full: under a steady stream the rows of a few milliseconds share one claim, one producer
    # request and one mark, at the price of at most this much latency; a lone row, arriving
    # after a quiet spell, is claimed at once.
    relay_gather: float = Field(default=0.002, ge=0, le=1, description="seconds")
    relay_rebalance_interval: float = Field(default=1.0, gt=0, description="seconds")
    relay_backoff_initial: float = Field(default=0.1, gt=0, description="seconds")
    relay_backoff_max: float = Field(default=10.0, gt=0, description="seconds")
    relay_send_timeout: float = Field(default=30.0, gt=0, description="seconds")
    relay_metrics_host: str = "127.0.0.1"
    relay_metrics_port: int = Field(default=8002, ge=0, le=65535)
    outbox_prune_interval: float = Field(default=60.0, gt=0, description="seconds")
