"""The test credentials, and the settings each process runs with in a test: development
mode, short intervals and backoffs, and a topic prefix or consumer group of its own."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from api.settings import ApiSettings
from notifier.settings import NotifierSettings
from outbox_relay.settings import RelaySettings
from tests.support import brokers
from tests.support.names import unique

API_TOKEN = "test-token-0123456789abcdef"
EMAIL_SECRET = "test-email-secret-0123456789abcdef0123456789"
POSTMARK_TOKEN = "test-postmark-server-token"
WEBHOOK_USER = "postmark-hooks"
WEBHOOK_PASSWORD = "test-webhook-password-0123456789"


def make_api_settings(database_url: str, **overrides: Any) -> ApiSettings:
    """The api's settings for a test, accepting `API_TOKEN`."""
    values: dict[str, Any] = {
        "app_env": "development",
        "database_url": database_url,
        "api_tokens": (SecretStr(API_TOKEN),),
        "email_token_secret": SecretStr(EMAIL_SECRET),
        "public_base_url": "http://testserver",
        "relay_shards": 8,
    }
    values.update(overrides)
    return ApiSettings(**values)


def make_relay_settings(database_url: str, kafka_bootstrap: str, **overrides: Any) -> RelaySettings:
    """A relay's settings for a test, publishing under a topic prefix of its own."""
    values: dict[str, Any] = {
        "app_env": "development",
        "database_url": database_url,
        "kafka_bootstrap_servers": kafka_bootstrap,
        "kafka_topic_prefix": unique("t"),
        "kafka_enable_idempotence": brokers.idempotent(),
        "kafka_topic_partitions": 3,
        "relay_shards": 8,
        "relay_poll_interval": 0.5,
        "relay_rebalance_interval": 0.2,
        "relay_backoff_initial": 0.05,
        "relay_backoff_max": 1.0,
        "relay_metrics_port": 0,
    }
    values.update(overrides)
    return RelaySettings(**values)


def make_notifier_settings(
    database_url: str, kafka_bootstrap: str, sandbox_url: str, prefix: str, **overrides: Any
) -> NotifierSettings:
    """A notifier's settings for a test: a consumer group of its own, reading `prefix`'s
    topics and sending to the sandbox at `sandbox_url`."""
    values: dict[str, Any] = {
        "app_env": "development",
        "database_url": database_url,
        "kafka_bootstrap_servers": kafka_bootstrap,
        "kafka_topic_prefix": prefix,
        "kafka_enable_idempotence": brokers.idempotent(),
        "kafka_topic_partitions": 3,
        "notifier_group_id": unique("notifier"),
        "notifier_backoff_initial": 0.05,
        "notifier_backoff_max": 0.5,
        # Short claims and settle windows keep drills quick; the sandbox's search has no lag
        # unless a test gives it one (then it sets a settle window longer than that lag).
        "notifier_lease": 10.0,
        "notifier_search_settle": 0.5,
        "notifier_retry_interval": 0.2,
        "api_tokens": (SecretStr(API_TOKEN),),
        "email_token_secret": SecretStr(EMAIL_SECRET),
        "public_base_url": "http://testserver",
        "mail_from": "Postroom <hello@postroom.test>",
        "postmark_server_token": SecretStr(POSTMARK_TOKEN),
        "postmark_api_url": sandbox_url + "/",
        "postmark_timeout": 5.0,
        "webhook_username": WEBHOOK_USER,
        "webhook_password": SecretStr(WEBHOOK_PASSWORD),
        "relay_shards": 8,
    }
    values.update(overrides)
    return NotifierSettings(**values)
