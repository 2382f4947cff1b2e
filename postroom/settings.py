"""Typed settings, one class per process, read from the environment and an optional `.env`.

Outside development a missing or placeholder secret stops the process at start with a
one-line reason (`ConfigError`), so a mis-deployed service never runs with a guessable key.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

AppEnv = Literal["development", "staging", "production"]

# Values people paste into example files; none of them may protect a real deployment.
_PLACEHOLDERS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "change_me",
        "secret",
        "password",
        "placeholder",
        "todo",
        "xxx",
        "test",
        "example",
        "dev",
        "development",
        "postmark_api_test",  # Postmark's test token: accepted, and nothing is delivered
    }
)
_DEV_PREFIX = "dev-only-"


class ConfigError(RuntimeError):
    """A setting makes the process unsafe or unable to start; the message is one line."""


def is_placeholder(value: str) -> bool:
    """True for empty, well-known example values and the development defaults."""
    lowered = value.strip().lower()
    return lowered in _PLACEHOLDERS or lowered.startswith(_DEV_PREFIX)


def asyncpg_url(url: str) -> str:
    """The SQLAlchemy form of a PostgreSQL URL, whichever spelling the operator used."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    raise ConfigError(f"DATABASE_URL must be a postgresql:// URL, got scheme {url.split(':')[0]!r}")


def plain_url(url: str) -> str:
    """The libpq/asyncpg form of a PostgreSQL URL (no SQLAlchemy driver suffix)."""
    return "postgresql://" + asyncpg_url(url).removeprefix("postgresql+asyncpg://")


class CommonSettings(BaseSettings):
    """What every process reads."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    app_env: AppEnv = "development"
    database_url: str = "postgresql://postgres@127.0.0.1:5433/postroom"
    database_pool_size: int = Field(default=20, ge=1, le=200)
    database_connect_timeout: float = Field(default=3.0, gt=0)
    relay_shards: int = Field(default=8, ge=1, le=1024)
    # false: the api raises no NOTIFY and the relays do not LISTEN; they poll (a fallback,
    # and the baseline the benchmarks compare the wake-ups against).
    outbox_notify: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        asyncpg_url(value)
        return value

    @property
    def sqlalchemy_url(self) -> str:
        return asyncpg_url(self.database_url)

    def _require_secret(self, name: str, value: str, *, min_length: int) -> None:
        if not value.strip():
            raise ConfigError(f"{name} is missing; set it in the environment or .env")
        if self.app_env == "development":
            return
        if is_placeholder(value):
            raise ConfigError(
                f"{name} is missing or a placeholder; set a real secret ({self.app_env})"
            )
        if len(value) < min_length:
            raise ConfigError(f"{name} must be at least {min_length} characters ({self.app_env})")


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


class HttpServiceSettings(CommonSettings):
    """What the processes with a bearer-protected HTTP API and verification links read."""

    api_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    email_token_secret: SecretStr = SecretStr("")
    public_base_url: str = "http://127.0.0.1:8000"
    access_log: bool = False
    # How often the process deletes what it keeps only for a while (see postroom/retention.py).
    prune_interval: float = Field(default=300.0, gt=0, description="seconds")

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        return _split_commas(value)

    @model_validator(mode="after")
    def _service_secrets_present(self) -> HttpServiceSettings:
        if not self.api_tokens:
            raise ConfigError("API_TOKENS is missing; set at least one comma-separated token")
        for token in self.api_tokens:
            self._require_secret("API_TOKENS", token.get_secret_value(), min_length=16)
        self._require_secret(
            "EMAIL_TOKEN_SECRET", self.email_token_secret.get_secret_value(), min_length=32
        )
        return self


class ApiSettings(HttpServiceSettings):
    """Settings of the `api` process."""

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    email_token_max_age: int = Field(default=48 * 3600, ge=60, description="seconds")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    idempotency_key_ttl: int = Field(default=24 * 3600, ge=60, description="seconds")


class KafkaSettings(CommonSettings):
    """What every process that talks to Kafka reads."""

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = Field(default="postroom", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    # False with brokers that grant no producer ids (the embedded one); true in production.
    kafka_enable_idempotence: bool = True
    kafka_topic_partitions: int = Field(default=6, ge=1, le=1000)
    kafka_replication_factor: int = Field(default=1, ge=1, le=10)

    def topic(self, aggregate_type: str) -> str:
        return f"{self.kafka_topic_prefix}.{aggregate_type}"


class RelaySettings(KafkaSettings):
    """Settings of the `relay` process."""

    relay_id: str = Field(default="", description="defaults to host-pid")
    relay_batch_size: int = Field(default=1000, ge=1, le=10_000)
    # One producer request per partition per cycle keeps a failed send from being overtaken
    # by a later one; the cycle is trimmed to this many bytes of record values to fit.
    relay_batch_bytes: int = Field(default=512 * 1024, ge=16 * 1024)
    relay_max_record_bytes: int = Field(default=1024 * 1024, ge=1024)
    relay_poll_interval: float = Field(default=1.0, gt=0, description="seconds")
    relay_rebalance_interval: float = Field(default=1.0, gt=0, description="seconds")
    relay_backoff_initial: float = Field(default=0.1, gt=0, description="seconds")
    relay_backoff_max: float = Field(default=10.0, gt=0, description="seconds")
    relay_send_timeout: float = Field(default=30.0, gt=0, description="seconds")
    relay_metrics_host: str = "127.0.0.1"
    relay_metrics_port: int = Field(default=8002, ge=0, le=65535)
    outbox_retention: float = Field(default=7 * 24 * 3600, ge=0, description="seconds")
    outbox_prune_interval: float = Field(default=60.0, gt=0, description="seconds")


class NotifierSettings(KafkaSettings, HttpServiceSettings):
    """Settings of the `notifier` process."""

    notifier_host: str = "127.0.0.1"
    notifier_port: int = Field(default=8001, ge=1, le=65535)
    notifier_group_id: str = "postroom-notifier"
    notifier_max_attempts: int = Field(default=6, ge=1, le=50)
    notifier_backoff_initial: float = Field(default=0.5, gt=0, description="seconds")
    notifier_backoff_max: float = Field(default=30.0, gt=0, description="seconds")
    notifier_batch_size: int = Field(default=500, ge=1, le=500)
    # How long a claim on a notification lasts; it must outlive the longest Postmark call.
    notifier_lease: float = Field(default=60.0, gt=0, description="seconds")
    # How long Postmark's search may lag behind an acceptance: after an ambiguous attempt, a
    # search that finds nothing counts as "not sent" only once this much time has passed.
    notifier_search_settle: float = Field(default=60.0, ge=0, description="seconds")
    # How long the broker may hold an idle fetch. Kafka answers it as soon as a record
    # arrives; some Kafka-compatible brokers (Tansu) hold it to about half this, so it bounds
    # how long an email arriving alone waits to be read, at the price of idle fetches.
    notifier_fetch_wait: float = Field(default=0.1, gt=0, le=30, description="seconds")
    # Webhook receipts recognise Postmark's re-posts (up to ~10.5 hours); then they go.
    webhook_receipt_retention: float = Field(default=7 * 24 * 3600, gt=0, description="seconds")
    # The longest the retry loop sleeps before it looks for due notifications again.
    notifier_retry_interval: float = Field(default=1.0, gt=0, description="seconds")
    mail_from: str = "Postroom <hello@postroom.test>"
    postmark_server_token: SecretStr = SecretStr("")
    postmark_api_url: str = "https://api.postmarkapp.com/"
    postmark_message_stream: str = "outbound"
    postmark_timeout: float = Field(default=10.0, gt=0, description="seconds")
    webhook_username: str = ""
    webhook_password: SecretStr = SecretStr("")
    staging_allowed_recipients: Annotated[tuple[str, ...], NoDecode] = ()
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    @field_validator("staging_allowed_recipients", mode="before")
    @classmethod
    def _split_recipients(cls, value: object) -> object:
        return _split_commas(value)

    @model_validator(mode="after")
    def _lease_outlives_a_call(self) -> NotifierSettings:
        if self.notifier_lease <= self.postmark_timeout:
            raise ValueError(
                f"NOTIFIER_LEASE ({self.notifier_lease:g} s) must be longer than "
                f"POSTMARK_TIMEOUT ({self.postmark_timeout:g} s): a claim must outlive the "
                "Postmark call it covers"
            )
        # A request may reach Postmark up to POSTMARK_TIMEOUT after its attempt began, and
        # its search lags after that: a shorter window resends what was accepted. Development
        # and tests talk to the sandbox, whose search lags only when told to.
        if self.app_env != "development" and self.notifier_search_settle <= self.postmark_timeout:
            raise ValueError(
                f"NOTIFIER_SEARCH_SETTLE ({self.notifier_search_settle:g} s) must be longer "
                f"than POSTMARK_TIMEOUT ({self.postmark_timeout:g} s) plus Postmark's search lag"
            )
        return self

    @model_validator(mode="after")
    def _postmark_secrets_present(self) -> NotifierSettings:
        self._require_secret(
            "POSTMARK_SERVER_TOKEN", self.postmark_server_token.get_secret_value(), min_length=8
        )
        self._require_secret("WEBHOOK_USERNAME", self.webhook_username, min_length=3)
        self._require_secret(
            "WEBHOOK_PASSWORD", self.webhook_password.get_secret_value(), min_length=16
        )
        return self

    def allowed_in_staging(self, address: str) -> bool:
        """Outside staging everyone is allowed; in staging only the listed addresses and
        `@domain` entries."""
        if self.app_env != "staging":
            return True
        address = address.lower()
        domain = "@" + address.rpartition("@")[2]
        allowed = {entry.lower() for entry in self.staging_allowed_recipients}
        return address in allowed or domain in allowed
