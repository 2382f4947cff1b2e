"""Which broker the tests and `make dev` run: Apache Kafka where Java 17+ and Maven are found,
Tansu otherwise, said in one line; under CI=true a missing Java is a failure, never a
fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom_cli import embedded
from postroom_cli.embedded import InfrastructureError, broker_kind


@pytest.fixture
def no_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH with neither java nor mvn on it."""
    monkeypatch.setenv("PATH", str(tmp_path))


def test_without_java_the_run_says_so_in_one_line_and_uses_tansu(
    no_java: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("POSTROOM_TEST_BROKER", raising=False)

    assert broker_kind("POSTROOM_TEST_BROKER") == "tansu"

    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1
    assert [word in said[0] for word in ("java", "mvn", "Tansu")] == [True, True, True]


def test_without_java_under_ci_it_fails_and_never_falls_back(
    no_java: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("POSTROOM_TEST_BROKER", raising=False)

    with pytest.raises(InfrastructureError, match="CI=true"):
        broker_kind("POSTROOM_TEST_BROKER")


def test_asking_for_kafka_without_java_fails_and_tansu_is_taken_when_asked(
    no_java: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("POSTROOM_DEV_BROKER", "kafka")
    with pytest.raises(InfrastructureError, match="POSTROOM_DEV_BROKER=kafka"):
        broker_kind("POSTROOM_DEV_BROKER")
    monkeypatch.setenv("POSTROOM_DEV_BROKER", "tansu")
    assert broker_kind("POSTROOM_DEV_BROKER") == "tansu"
    monkeypatch.setenv("POSTROOM_DEV_BROKER", "redpanda")
    with pytest.raises(InfrastructureError, match="kafka or tansu"):
        broker_kind("POSTROOM_DEV_BROKER")


def test_with_java_17_and_maven_it_is_apache_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_java_major", lambda: 17)
    monkeypatch.setattr(embedded.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.delenv("POSTROOM_TEST_BROKER", raising=False)
    assert broker_kind("POSTROOM_TEST_BROKER") == "kafka"
    monkeypatch.setattr(embedded, "_java_major", lambda: 11)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(InfrastructureError, match="17 or newer"):
        broker_kind("POSTROOM_TEST_BROKER")
