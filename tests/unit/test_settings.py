import json
import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from api.settings import ApiSettings
from notifier.settings import NotifierSettings
from postroom.settings import CommonSettings, ConfigError, asyncpg_url

GOOD = {
    "api_tokens": (SecretStr("prod-token-7f3a9c1e5b2d4f6a"),),
    "email_token_secret": SecretStr("k" * 40),
}


def test_production_accepts_real_secrets() -> None:
    settings = ApiSettings(app_env="production", **GOOD)
    assert settings.api_tokens[0].get_secret_value() == "prod-token-7f3a9c1e5b2d4f6a"


@pytest.mark.parametrize("env", ["staging", "production"])
@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        (
            "email_token_secret",
            SecretStr("changeme"),
            "EMAIL_TOKEN_SECRET is missing or a placeholder",
        ),
        (
            "email_token_secret",
            SecretStr("dev-only-abcdefabcdefabcdefabcdefabcdefabcdef"),
            "placeholder",
        ),
        ("email_token_secret", SecretStr("short-but-real"), "at least 32 characters"),
        ("api_tokens", (SecretStr("secret"),), "API_TOKENS is missing or a placeholder"),
        ("api_tokens", (), "API_TOKENS is missing"),
    ],
)
def test_outside_development_placeholders_stop_the_process(
    env: str, field: str, value: object, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        ApiSettings(app_env=env, **{**GOOD, field: value})


def test_development_accepts_generated_dev_secrets() -> None:
    settings = ApiSettings(
        app_env="development",
        api_tokens=(SecretStr("dev-only-token"),),
        email_token_secret=SecretStr("dev-only-secret"),
    )
    assert settings.app_env == "development"


def test_even_development_needs_a_token_and_a_secret() -> None:
    with pytest.raises(ConfigError, match="EMAIL_TOKEN_SECRET is missing"):
        ApiSettings(app_env="development", api_tokens=(SecretStr("t"),))


def test_tokens_come_comma_separated_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKENS", " first-token-aaaaaaaaaa , second-token-bbbbbbbbbb ,")
    monkeypatch.setenv("EMAIL_TOKEN_SECRET", "e" * 40)
    settings = ApiSettings()
    assert [t.get_secret_value() for t in settings.api_tokens] == [
        "first-token-aaaaaaaaaa",
        "second-token-bbbbbbbbbb",
    ]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_database_urls_in_any_common_spelling(given: str, expected: str) -> None:
    assert asyncpg_url(given) == expected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://admin:Top@Secret9@127.0.0.1:5432/db",  # the rest would be the host
        "postgresql://admin:Top?Secret9@127.0.0.1:5432/db",  # asyncpg: a query
        "postgresql://admin:Top/Secret9@127.0.0.1:5432/db",  # asyncpg: a path
        "postgresql://admin:Top#Secret9@127.0.0.1:5432/db",  # asyncpg: a fragment
        "postgresql://admin:Secret9@127.0.0.1:port/db",
        "postgresql://admin:Secret9@127.0.0.1:99999/db",
        "host=db user=admin password=Secret9",  # a libpq keyword string
        "mysql://admin:Secret9@db/x",
        "postgresql://admin:Secret9@127.0.0.1:5432,127.0.0.2:5432/db",  # one host only
    ],
)
def test_a_database_url_read_wrongly_is_refused_in_a_line_that_quotes_none_of_it(
    url: str,
) -> None:
    with pytest.raises(ConfigError) as refused:
        CommonSettings(database_url=url)
    message = str(refused.value)
    assert message.startswith("DATABASE_URL")
    assert "\n" not in message
    assert "Secret9" not in message
    assert "127.0.0.1" not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://admin:Top%40Secret%3F9@127.0.0.1:5432/db",
        "postgresql:///postroom?host=/var/run/postgresql",
        "postgresql+asyncpg://u:p@Db.Example.com/x?ssl=require",
        "postgres://u@[::1]:5433/postroom",
    ],
)
def test_well_formed_database_urls_are_accepted(url: str) -> None:
    assert CommonSettings(database_url=url).database_url == url


def run_api(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m api` with `env`, which it is expected to refuse."""
    return subprocess.run(
        [sys.executable, "-m", "api"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_api_refuses_to_start_with_a_one_line_reason() -> None:
    env = {
        **os.environ,
        "APP_ENV": "production",
        "API_TOKENS": "changeme",
        "EMAIL_TOKEN_SECRET": "x" * 40,
    }
    proc = run_api(env)
    assert proc.returncode == 2
    # Outside development the line is JSON, like every other line of the process's log.
    [line] = proc.stderr.strip().splitlines()
    entry = json.loads(line)
    assert (entry["event"], entry["level"], entry["service"]) == (
        "configuration error",
        "error",
        "postroom-api",
    )
    assert entry["reason"] == (
        "API_TOKENS is missing or a placeholder; set a real secret (production)"
    )
    assert "changeme" not in proc.stderr


def test_in_development_the_refusal_is_one_readable_line() -> None:
    env = {**os.environ, "APP_ENV": "development", "API_TOKENS": ""}
    env.pop("EMAIL_TOKEN_SECRET", None)
    proc = run_api(env)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("postroom api: configuration error: ")


NOTIFIER_GOOD = {
    "api_tokens": (SecretStr("prod-token-7f3a9c1e5b2d4f6a"),),
    "email_token_secret": SecretStr("k" * 40),
    "postmark_server_token": SecretStr("c0ffee00-1111-2222-3333-444455556666"),
    "webhook_username": "postmark",
    "webhook_password": SecretStr("w" * 24),
}


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        # Postmark's test token sends nothing: a production notifier must not start with it.
        ("postmark_server_token", SecretStr("POSTMARK_API_TEST"), "POSTMARK_SERVER_TOKEN"),
        ("postmark_server_token", SecretStr("a-real-looking-token"), None),
        ("postmark_server_token", SecretStr("changeme"), "POSTMARK_SERVER_TOKEN is missing"),
        ("webhook_password", SecretStr(""), "WEBHOOK_PASSWORD is missing"),
        ("webhook_password", SecretStr("short"), "WEBHOOK_PASSWORD must be at least 16"),
        ("api_tokens", (), "API_TOKENS is missing"),
    ],
)
def test_the_notifier_refuses_placeholder_secrets_in_production(
    field: str, value: object, reason: str | None
) -> None:
    values = {**NOTIFIER_GOOD, field: value}
    if reason is None:
        assert NotifierSettings(app_env="production", **values)
    else:
        with pytest.raises(ConfigError, match=reason):
            NotifierSettings(app_env="production", **values)


def test_the_staging_allowlist_takes_addresses_and_domains() -> None:
    settings = NotifierSettings(
        app_env="staging",
        **NOTIFIER_GOOD,
        staging_allowed_recipients="qa@example.com, @team.example",
    )
    assert settings.allowed_in_staging("QA@example.com")
    assert settings.allowed_in_staging("anyone@team.example")
    assert not settings.allowed_in_staging("someone@example.com")
    production = NotifierSettings(app_env="production", **NOTIFIER_GOOD)
    assert production.allowed_in_staging("someone@example.com")


def test_a_claim_must_outlive_the_postmark_call_it_covers_and_its_start() -> None:
    # A call may start up to CALL_START_WINDOW after its stamp, then lasts POSTMARK_TIMEOUT.
    with pytest.raises(ValueError, match=r"NOTIFIER_LEASE .* must be longer than POSTMARK_TIMEOUT"):
        NotifierSettings(
            app_env="production", notifier_lease=10, postmark_timeout=10, **NOTIFIER_GOOD
        )
    with pytest.raises(ValueError, match=r"plus 0.5 s for the call to start"):
        NotifierSettings(
            app_env="production", notifier_lease=10.5, postmark_timeout=10, **NOTIFIER_GOOD
        )
    fits = NotifierSettings(
        app_env="production", notifier_lease=10.6, postmark_timeout=10, **NOTIFIER_GOOD
    )
    assert fits.call_reach == 10.5
    assert NotifierSettings(app_env="production", **NOTIFIER_GOOD).notifier_lease == 60


def test_outside_development_the_settle_window_must_cover_the_search_lag() -> None:
    # It counts from the last instant a call could reach Postmark, not from the attempt's
    # start: shorter than POSTMARK_TIMEOUT is fine, but never nothing.
    with pytest.raises(ValueError, match=r"NOTIFIER_SEARCH_SETTLE .* search lag"):
        NotifierSettings(app_env="production", notifier_search_settle=0, **NOTIFIER_GOOD)
    lag = NotifierSettings(app_env="production", notifier_search_settle=5, **NOTIFIER_GOOD)
    assert lag.notifier_search_settle == 5
    short = NotifierSettings(app_env="development", notifier_search_settle=0, **NOTIFIER_GOOD)
    assert short.notifier_search_settle == 0  # the sandbox's search does not lag
    assert NotifierSettings(app_env="production", **NOTIFIER_GOOD).notifier_search_settle == 60


@pytest.mark.parametrize("days", [6, 366])
def test_postmarks_retention_is_one_it_offers(days: int) -> None:
    with pytest.raises(ValueError, match="postmark_retention_days"):
        NotifierSettings(app_env="production", postmark_retention_days=days, **NOTIFIER_GOOD)


def test_the_search_is_trusted_a_day_short_of_postmarks_retention() -> None:
    default = NotifierSettings(app_env="production", **NOTIFIER_GOOD)
    shortest = NotifierSettings(app_env="production", postmark_retention_days=7, **NOTIFIER_GOOD)
    assert default.postmark_retention_days == 45  # Postmark's default
    assert default.search_window == 44 * 86400
    assert shortest.search_window == 6 * 86400


def test_the_sender_is_named_after_the_brand_unless_mail_from_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("MAIL_FROM", "BRAND_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert NotifierSettings(**NOTIFIER_GOOD).mail_from == "Postroom <hello@postroom.test>"
    branded = NotifierSettings(**NOTIFIER_GOOD, brand_name="Acme, Inc.")
    assert branded.mail_from == '"Acme, Inc." <hello@postroom.test>'
    monkeypatch.setenv("BRAND_NAME", "Acme")
    assert NotifierSettings(**NOTIFIER_GOOD).mail_from == "Acme <hello@postroom.test>"
    monkeypatch.setenv("MAIL_FROM", "Ops <ops@acme.example>")
    assert NotifierSettings(**NOTIFIER_GOOD).mail_from == "Ops <ops@acme.example>"


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("mail_from", "two@example.com, three@example.com", "one address"),
        ("mail_from", "not an address", "one address"),
        ("mail_reply_to", "nobody@", "one address"),
        ("brand_name", "Acme\nBcc: x@y", "one line"),
        ("brand_support_email", "help", "not an email address"),
        ("default_locale", "english", "not a BCP 47 language tag"),
    ],
)
def test_the_emails_settings_refuse_what_cannot_be_sent(
    setting: str, value: str, says: str
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=says):
        NotifierSettings(**{**NOTIFIER_GOOD, setting: value})
