"""Settings of the `notifier` process, and the rule they set on who may receive mail."""

from __future__ import annotations

from email.utils import formataddr, getaddresses
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from postroom.addresses import address_key
from postroom.settings import EmailSettings, HttpServiceSettings, KafkaSettings, split_commas

# How long a Postmark call may take to start once its attempt is stamped in the database
# (a worker is free by then, so it starts at once; a call that has not is not made at all).
# A call may thus reach Postmark until START_WINDOW + POSTMARK_TIMEOUT after its stamp.
CALL_START_WINDOW = 0.5
DEFAULT_SENDER = "hello@postroom.test"
RETENTION_MARGIN_DAYS = 1


class NotifierSettings(KafkaSettings, HttpServiceSettings, EmailSettings):
    """Settings of the `notifier` process."""

    notifier_host: str = "127.0.0.1"
    notifier_port: int = Field(default=8001, ge=1, le=65535)
    notifier_group_id: str = "postroom-notifier"
    notifier_max_attempts: int = Field(default=6, ge=1, le=50)
    notifier_backoff_initial: float = Field(default=0.5, gt=0, description="seconds")
    notifier_backoff_max: float = Field(default=30.0, gt=0, description="seconds")
    notifier_batch_size: int = Field(default=500, ge=1, le=500)
    # How long a claim on a notification lasts; it must outlive the last instant a call made
    # under it can reach Postmark (`call_reach`).
    notifier_lease: float = Field(default=60.0, gt=0, description="seconds")
    # How long Postmark's search may lag behind an acceptance: after an ambiguous attempt, a
    # search that finds nothing counts as "not sent" only once this much time has passed
    # since the last instant that attempt could have reached Postmark.
    notifier_search_settle: float = Field(default=60.0, ge=0, description="seconds")
    # How long the broker may hold an idle fetch. Kafka answers it as soon as a record
    # arrives; some Kafka-compatible brokers (Tansu) hold it to about half this, so it bounds
    # how long an email arriving alone waits to be read, at the price of idle fetches.
    notifier_fetch_wait: float = Field(default=0.1, gt=0, le=30, description="seconds")
    # A batch starts at most this long after the one before it started, unless that one was
    # full: under a steady stream the records of a few milliseconds share one transaction,
    # one Postmark call and one offset commit, at the price of at most this much latency; a
    # record arriving after a quiet spell is taken at once.
    notifier_gather: float = Field(default=0.02, ge=0, le=1, description="seconds")
    # Webhook receipts recognise Postmark's re-posts (up to ~10.5 hours); then they go.
    webhook_receipt_retention: float = Field(default=7 * 24 * 3600, gt=0, description="seconds")
    # The longest the retry loop sleeps before it looks for due notifications again.
    notifier_retry_interval: float = Field(default=1.0, gt=0, description="seconds")
    # The sender of every email: an address, or `Name <address>`.
    mail_from: str = f"Postroom <{DEFAULT_SENDER}>"
    # Where replies go, when not to MAIL_FROM.
    mail_reply_to: str = ""
    postmark_server_token: SecretStr = SecretStr("")
    postmark_api_url: str = "https://api.postmarkapp.com/"
    postmark_message_stream: str = "outbound"
    # The total deadline of one Postmark call: connect, send and read together.
    postmark_timeout: float = Field(default=10.0, gt=0, description="seconds")
    # How long the Postmark account keeps messages (its retention setting, 7 to 365 days):
    # past that, its search cannot show an earlier attempt's message, and "not found" means
    # nothing.
    postmark_retention_days: int = Field(default=45, ge=7, le=365, description="days")
    webhook_username: str = ""
    webhook_password: SecretStr = SecretStr("")
    staging_allowed_recipients: Annotated[tuple[str, ...], NoDecode] = ()
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    @model_validator(mode="before")
    @classmethod
    def _sender_named_after_the_brand(cls, data: object) -> object:
        """Without MAIL_FROM, the sender's name is BRAND_NAME (the address stays the
        development one: set MAIL_FROM to send from your domain)."""
        if isinstance(data, dict) and not data.get("mail_from") and data.get("brand_name"):
            name = str(data["brand_name"]).strip()
            return {**data, "mail_from": formataddr((name, DEFAULT_SENDER))}
        return data

    @field_validator("mail_from", "mail_reply_to")
    @classmethod
    def _one_address(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value and info.field_name == "mail_reply_to":
            return value
        parsed = getaddresses([value])
        if len(parsed) != 1 or "@" not in parsed[0][1] or any(ord(c) < 32 for c in value):
            raise ValueError(f"must be one address or 'Name <address>', got {value[:80]!r}")
        try:
            validate_email(parsed[0][1], check_deliverability=False, test_environment=True)
        except EmailNotValidError as exc:
            raise ValueError(f"not an email address: {exc}") from None
        return value

    @field_validator("staging_allowed_recipients", mode="before")
    @classmethod
    def _split_recipients(cls, value: object) -> object:
        return split_commas(value)

    @property
    def call_reach(self) -> float:
        """Seconds after an attempt's stamp until which its call may still reach Postmark: it
        starts within CALL_START_WINDOW and ends by POSTMARK_TIMEOUT after its start."""
        return CALL_START_WINDOW + self.postmark_timeout

    @model_validator(mode="after")
    def _lease_outlives_a_call(self) -> NotifierSettings:
        if self.notifier_lease <= self.call_reach:
            raise ValueError(
                f"NOTIFIER_LEASE ({self.notifier_lease:g} s) must be longer than "
                f"POSTMARK_TIMEOUT ({self.postmark_timeout:g} s) plus {CALL_START_WINDOW:g} s "
                "for the call to start: a claim must outlive the Postmark call it covers"
            )
        # The settle window counts from the last instant an attempt could have reached
        # Postmark, so it need only cover the search's lag; Postmark's search always lags.
        # Development and tests talk to the sandbox, whose search lags only when told to.
        if self.app_env != "development" and self.notifier_search_settle <= 0:
            raise ValueError(
                f"NOTIFIER_SEARCH_SETTLE ({self.notifier_search_settle:g} s) must cover "
                "Postmark's search lag after the last instant an attempt could reach it "
                "(its start + POSTMARK_TIMEOUT): give it the longest lag you have seen"
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

    @property
    def search_window(self) -> float:
        """Seconds after a notification's first attempt during which Postmark's search still
        shows what it sent: the retention less a day, as the purge's hour is not ours to know."""
        return (self.postmark_retention_days - RETENTION_MARGIN_DAYS) * 86400.0

    def allowed_in_staging(self, address: str) -> bool:
        """Outside staging everyone is allowed; in staging only the listed addresses and
        `@domain` entries."""
        if self.app_env != "staging":
            return True
        address = address_key(address)
        domain = "@" + address.rpartition("@")[2]
        allowed = {address_key(entry) for entry in self.staging_allowed_recipients}
        return address in allowed or domain in allowed
