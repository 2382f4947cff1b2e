"""Typed settings every process builds on, read from the environment and an optional `.env`;
each process keeps its own class in its own folder.

Outside development a missing or placeholder secret stops the process at start with a
one-line reason (`ConfigError`), so a mis-deployed service never runs with a guessable key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from postroom.locales import InvalidLocale, canonical_locale

if TYPE_CHECKING:
    from postroom.emails import Emails

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
    # Only what stands before "://" is shown: a value without it may be a libpq keyword
    # string, password and all, and errors reach logs.
    scheme = url.split("://", 1)[0] if "://" in url and len(url.split("://", 1)[0]) < 30 else ""
    got = f", got scheme {scheme!r}" if scheme else " (postgresql://user:password@host:port/db)"
    raise ConfigError(f"DATABASE_URL must be a postgresql:// URL{got}")


def check_database_url(url: str) -> None:
    """Refuse, in one line that quotes none of it, a DATABASE_URL that would be read wrong
    or fail later: a malformed port or query, or a host with an '@' in it (a password's
    unencoded '@', which would send the rest of the password out as a host name)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(asyncpg_url(url))
        port = parsed.port
    except ConfigError:
        raise
    except Exception:  # SQLAlchemy says what it could not parse, quoting it
        raise ConfigError(
            "DATABASE_URL is not a URL Postroom can read: percent-encode the user name and "
            "password (%40 for @, %2F for /, %3F for ?, %3A for :)"
        ) from None
    if parsed.host and ("@" in parsed.host or "%" in parsed.host):
        raise ConfigError(
            "DATABASE_URL's host has an '@' in it: percent-encode the password (%40 for @)"
        )
    if port is not None and not 0 < port < 65536:
        raise ConfigError("DATABASE_URL's port must be between 1 and 65535")
    # The engine (SQLAlchemy) and the pools (asyncpg, which splits URLs as urllib does) must
    # read the same user, password, host and database: an unencoded '?', '/' or '#' in the
    # password makes them disagree, and one of them would connect somewhere else.
    split = urlsplit(plain_url(url))
    try:
        agree = (
            unquote(split.username or "") == (parsed.username or "")
            and unquote(split.password or "") == (parsed.password or "")
            and (split.hostname or "") == (parsed.host or "").lower()
            and split.port == port
            and unquote(split.path.lstrip("/")) == (parsed.database or "")
        )
    except ValueError:
        agree = False
    if not agree:
        raise ConfigError(
            "DATABASE_URL is read two ways: percent-encode the user name and password "
            "(%40 for @, %2F for /, %3F for ?, %23 for #, %3A for :)"
        )


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
    # Seconds published outbox rows are kept. Who deletes them: the relays; with
    # OUTBOX_PUBLISHER=debezium (no relay marks rows published), the api, by age alone.
    outbox_retention: float = Field(default=7 * 24 * 3600, ge=0, description="seconds")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        check_database_url(value)
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


def split_commas(value: object) -> object:
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
        return split_commas(value)

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


class BrandSettings(CommonSettings):
    """The product's name and support address: in every built-in email and on the pages a
    verification link opens."""

    brand_name: str = Field(default="Postroom", min_length=1, max_length=100)
    # Shown in every built-in email's footer when set.
    brand_support_email: str = Field(default="", max_length=254)

    @field_validator("brand_name")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must be one line of text")
        return value.strip()

    @field_validator("brand_support_email")
    @classmethod
    def _an_address(cls, value: str) -> str:
        from email_validator import EmailNotValidError, validate_email

        if value.strip():
            try:
                validate_email(value.strip(), check_deliverability=False, test_environment=True)
            except EmailNotValidError as exc:
                raise ValueError(f"not an email address: {exc}") from None
        return value.strip()


class EmailSettings(BrandSettings):
    """Where the emails come from: the templates folder (its `emails.yaml`, if any, is the
    catalogue) and the locale an email falls back to."""

    notifier_templates_dir: Path | None = None
    default_locale: str = "en"
    # Where verification links point (HttpServiceSettings reads it too, with this default).
    public_base_url: str = "http://127.0.0.1:8000"

    @field_validator("notifier_templates_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("default_locale")
    @classmethod
    def _a_locale(cls, value: str) -> str:
        try:
            return canonical_locale(value)
        except InvalidLocale as exc:
            raise ValueError(str(exc)) from None

    def load_emails(self, *, check_all: bool = True) -> Emails:
        """The catalogue and templates in effect, checked (unless `check_all` is false):
        ConfigError in one line naming the first problem (a catalogue that does not validate,
        a template or a variable missing in some locale)."""
        from postroom.emails import Brand, CatalogueError, Emails
        from postroom.emails.samples import check

        try:
            emails = Emails.load(
                self.notifier_templates_dir,
                brand=Brand(self.brand_name, self.brand_support_email, self.public_base_url),
                default_locale=self.default_locale,
            )
        except CatalogueError as exc:
            raise ConfigError(f"emails: {exc}") from None
        problems = check(emails) if check_all else []
        if problems:
            more = f" (and {len(problems) - 1} more: postroom templates check)"
            raise ConfigError(f"emails: {problems[0]}{more if len(problems) > 1 else ''}")
        return emails


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


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S], *, env_file: tuple[str, ...] | None = None) -> S:
    """`cls` read from the environment (and `env_file`, default `.env`). A setting that is
    missing, malformed or unsafe raises ConfigError, whose message is one line naming it."""
    try:
        return cls() if env_file is None else cls(_env_file=env_file)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]).upper() or "settings"
        raise ConfigError(f"{where}: {first['msg']}") from None
